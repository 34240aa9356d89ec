"""`Distiller`: Keras's `keras.distillation.Distiller` with a correct default loss, a cached teacher,
unlabelled transfer data and schedulable temperature and weights."""

import numbers
import warnings

import keras
import tensorflow as tf
from keras import ops

from kopt._keras.distribution import scale_loss_for_distribution
from kopt.distill import _teacher_cache as teacher_cache
from kopt.distill.losses import FeatureDistillation, LogitsDistillation, check_temperature

# The label of an unlabelled sample (integer class labels); float labels use NaN.
UNLABELED = -1

TEACHER_OUTPUTS = ("online", "cache")
_FINAL = "final_output"


def check_weight(value, name):
    """Returns `value` as a float if it is a number in [0, 1], else raises a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    return float(value)


def _check_outputs(teacher, student):
    if not (getattr(teacher, "outputs", None) and getattr(student, "outputs", None)):
        return  # subclassed models: checked on the first batch
    teacher_outputs, student_outputs = keras.tree.flatten(teacher.outputs), keras.tree.flatten(student.outputs)
    shapes = [(tuple(t.shape), tuple(s.shape)) for t, s in zip(teacher_outputs, student_outputs)]
    if len(teacher_outputs) != len(student_outputs) or any(t[1:] != s[1:] for t, s in shapes):
        raise ValueError(
            f"`teacher` and `student` must have outputs of the same shapes (the student learns the teacher's "
            f"outputs class by class), got teacher {[tuple(t.shape) for t in teacher_outputs]} and student "
            f"{[tuple(s.shape) for s in student_outputs]}.")


def _features_model(model, layer_names):
    """A model that returns `model`'s outputs and the outputs of `layer_names` in one pass (None if none)."""
    if not layer_names:
        return None
    outputs = {_FINAL: model.outputs[0] if len(model.outputs) == 1 else model.outputs}
    outputs.update({name: model.get_layer(name).output for name in layer_names})
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs, name=f"{model.name}_features")


def _loss_function(loss):
    if isinstance(loss, str):
        return keras.losses.get(loss)
    return loss


def _labeled(labels):
    """`(labels with unlabelled entries zeroed, a float mask of labelled samples)`."""
    batch = ops.shape(labels)[0]
    if "int" in str(labels.dtype):
        missing = labels < 0
    else:
        missing = ops.isnan(labels)
    flat = ops.reshape(missing, (batch, -1))
    mask = ops.cast(ops.logical_not(ops.any(flat, axis=1)), "float32")
    return ops.where(missing, ops.zeros_like(labels), labels), mask


def _batch_size(x, y_pred):
    """The number of samples in the batch, as a float tensor (the weight of this batch in the epoch's means)."""
    first = next((value for value in keras.tree.flatten((x, y_pred)) if value is not None), None)
    return ops.cast(ops.shape(first)[0], "float32")


# `keras.losses.Loss` reductions that are a mean over the samples of a batch: what kopt computes (over the
# labelled samples) whatever the loss object says, so other reductions would be silently ignored.
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean")


def _check_reduction(loss, argument):
    for loss_fn in keras.tree.flatten(loss):
        reduction = getattr(loss_fn, "reduction", "sum_over_batch_size")
        if isinstance(loss_fn, keras.losses.Loss) and reduction not in _MEAN_REDUCTIONS:
            raise ValueError(
                f"`{argument}` got {type(loss_fn).__name__}(reduction={reduction!r}), but the Distiller averages "
                f"the supervised loss over the labelled samples of each batch (reduction='sum_over_batch_size') "
                f"and would ignore {reduction!r}. Pass the loss with its default reduction.")


def _is_kl_divergence(loss_fn):
    """True for Keras's KL divergence as a name, a function or a `KLDivergence` averaging over the batch."""
    if isinstance(loss_fn, str):
        try:
            loss_fn = keras.losses.get(loss_fn)
        except ValueError:
            return False
    if isinstance(loss_fn, keras.losses.KLDivergence):
        return loss_fn.reduction in _MEAN_REDUCTIONS
    return loss_fn is keras.losses.kl_divergence


# `keras.Model.compile`'s arguments other than `optimizer`, `loss` and `metrics`, which `Distiller.compile` passes on.
_MODEL_COMPILE_ARGUMENTS = ("loss_weights", "weighted_metrics", "run_eagerly", "steps_per_execution", "jit_compile",
                            "auto_scale_loss")


def _per_sample(loss_fn, labels, outputs):
    if isinstance(loss_fn, keras.losses.Loss):
        values = loss_fn.call(labels, outputs)  # unreduced, as sample weights need it
    else:
        values = loss_fn(labels, outputs)
    values = ops.cast(values, "float32")
    if len(values.shape) > 1:
        values = ops.mean(ops.reshape(values, (ops.shape(values)[0], -1)), axis=1)
    return values


@keras.saving.register_keras_serializable(package="kopt")
class Distiller(keras.distillation.Distiller):
    """Trains `student` to match a frozen `teacher` (Hinton's knowledge distillation).

    A `keras.distillation.Distiller` that:

    - uses `kopt.distill.LogitsDistillation()` (Hinton's `T^2 * KL` loss) by
      default; Keras's default is not that loss;
    - can compute the teacher's outputs once and reuse them every epoch
      (`teacher_outputs="cache"`), for inputs that do not change between epochs;
    - trains on unlabelled data: `fit(x)` with no labels learns from the teacher
      alone, and samples labelled `UNLABELED` (-1; NaN for float labels) in `y`
      count only in the distillation loss, so labelled and unlabelled samples mix;
    - lets `kopt.distill.DistillationSchedule` change the temperature and the
      loss weights during training;
    - scales its loss under `tf.distribute` as Keras's losses are scaled, and
      adds the student's regularization losses.

    The loss minimized on each batch is

        student_loss_weight * student_loss
        + (1 - student_loss_weight) * distillation_loss
        + the student's regularization losses,

    where `student_loss` is the supervised loss (from `compile(loss=...)`)
    averaged over the labelled samples of the batch (0 without labels), and
    `distillation_loss = sum(distillation_loss_weights[i] * distillation_losses[i])`.
    `fit` and `evaluate` log exactly one figure of it, `loss`, and its two parts,
    `student_loss` and `distillation_loss` (unweighted by `student_loss_weight`),
    each averaged over the batches weighted by their number of samples, as Keras
    averages `loss` (no separate `total_loss`: that is `loss`).

    `compile` also takes the keras.io "Knowledge Distillation" example's
    arguments (`student_loss_fn`, `distillation_loss_fn`, `alpha`, `temperature`)
    where they mean the same as kopt's; see `compile`.

    Pruned and QAT students train as they do alone (keep
    `kopt.sparsity.UpdatePruningStep()` in the callbacks); `distiller.student` is
    the trained model, to strip, save or convert.

    Args:
        teacher: a trained `keras.Model`; frozen here (`trainable = False`).
        student: the `keras.Model` to train, with outputs shaped as the teacher's.
        distillation_losses: a `DistillationLoss` or a list of them; None means
            `kopt.distill.LogitsDistillation()` (temperature 4).
        distillation_loss_weights: one weight in [0, 1] per distillation loss
            (default 1 each).
        student_loss_weight: weight in [0, 1] of the supervised loss on labels.
            0.1 by default: the teacher's soft targets carry most of the signal.
        teacher_outputs: `"online"` runs the teacher on every batch; `"cache"`
            runs it once per training sample before training (NumPy arrays, or a
            `tf.data.Dataset` with no random ops and no reshuffling) and reuses
            the outputs every epoch, however `fit` shuffles arrays. Validation
            data runs the teacher online.
        name: the model's name.
        **kwargs: passed to `keras.Model`.

    Example:

    ```python
    import keras
    import numpy as np
    import kopt
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller = kopt.distill.Distiller(teacher, student, teacher_outputs="cache")
    distiller.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x, epochs=2, verbose=0)  # no labels: the teacher's outputs alone
    trained = distiller.student

    # The keras.io example's compile call: the same loss as loss=, student_loss_weight=0.1, temperature 10.
    y = np.random.default_rng(1).integers(0, 3, 64)
    distiller.compile(optimizer=keras.optimizers.Adam(),
                      metrics=[keras.metrics.SparseCategoricalAccuracy()],
                      student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      distillation_loss_fn=keras.losses.KLDivergence(), alpha=0.1, temperature=10)
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    # {'distillation_loss': ..., 'loss': ..., 'sparse_categorical_accuracy': ..., 'student_loss': ...}
    ```
    """

    def __init__(self, teacher, student, distillation_losses=None, distillation_loss_weights=None,
                 student_loss_weight=0.1, teacher_outputs="online", name="distiller", **kwargs):
        for argument, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model):
                raise ValueError(f"`{argument}` must be a keras.Model, got {type(model).__name__}.")
        if teacher_outputs not in TEACHER_OUTPUTS:
            raise ValueError(f"`teacher_outputs` must be 'online' or 'cache', got {teacher_outputs!r}.")
        _check_outputs(teacher, student)
        if distillation_losses is None:
            distillation_losses = LogitsDistillation()
        losses = list(distillation_losses) if isinstance(distillation_losses, (list, tuple)) else [distillation_losses]
        for loss in losses:
            if not isinstance(loss, keras.distillation.DistillationLoss):
                raise ValueError(
                    f"`distillation_losses` must hold keras.distillation.DistillationLoss objects (e.g. "
                    f"kopt.distill.LogitsDistillation()), got {type(loss).__name__}.")
            if isinstance(loss, keras.distillation.LogitsDistillation) and any(
                    fn is keras.losses.kl_divergence for fn in keras.tree.flatten(loss.loss)):
                warnings.warn(
                    "keras.distillation.LogitsDistillation with loss='kl_divergence' is not Hinton's loss (it "
                    "clips logits/T to [1e-7, 1], with no softmax and no T^2 factor). Use "
                    "kopt.distill.LogitsDistillation(temperature=...).", stacklevel=2)
        if distillation_loss_weights is None:
            weights = [1.0] * len(losses)
        else:
            weights = list(distillation_loss_weights) if isinstance(
                distillation_loss_weights, (list, tuple)) else [distillation_loss_weights]
            if len(weights) != len(losses):
                raise ValueError(
                    f"`distillation_loss_weights` needs one weight per distillation loss: {len(losses)} losses, "
                    f"{len(weights)} weights.")
        weights = [check_weight(w, "distillation_loss_weights") for w in weights]
        check_weight(student_loss_weight, "student_loss_weight")
        super().__init__(teacher=teacher, student=student, distillation_losses=losses,
                         distillation_loss_weights=weights, student_loss_weight=student_loss_weight, name=name,
                         **kwargs)
        self.teacher_outputs = teacher_outputs
        self._temperatures = [keras.Variable(loss.temperature, trainable=False, dtype="float32",
                                             name=f"temperature_{i}")
                              for i, loss in enumerate(losses) if isinstance(loss, LogitsDistillation)]
        self._projections = [loss.projection_layer for loss in losses
                             if isinstance(loss, FeatureDistillation) and loss.projection_layer is not None]

        def names(attribute):
            found = [getattr(loss, attribute, None) for loss in losses]
            return list(dict.fromkeys(name for name in found if name))

        self._teacher_features = _features_model(teacher, names("teacher_layer_name"))
        self._student_features = _features_model(student, names("student_layer_name"))
        self._student_loss_fn = None
        self._keras_io_distillation_loss = False  # compile(distillation_loss_fn=...) was given
        # One loss figure: Keras's own `loss` tracker (created by compile, weighted by batch size) is the total.
        # keras.distillation.Distiller's `total_loss` tracker would log the same objective a second time, as an
        # unweighted mean of batches (a different number when the last batch is smaller).
        self._tracker.untrack(self.total_loss_tracker)
        del self.total_loss_tracker

    # Loss weights and temperature live in variables, so that a callback can change them between steps
    # of a compiled train function.
    @property
    def student_loss_weight(self):
        return float(ops.convert_to_numpy(self._student_loss_weight))

    @student_loss_weight.setter
    def student_loss_weight(self, value):
        value = check_weight(value, "student_loss_weight")
        if getattr(self, "_student_loss_weight", None) is None:
            self._student_loss_weight = keras.Variable(value, trainable=False, dtype="float32",
                                                       name="student_loss_weight")
        else:
            self._student_loss_weight.assign(value)

    @property
    def distillation_loss_weights(self):
        return [float(ops.convert_to_numpy(w)) for w in self._distillation_loss_weights]

    @distillation_loss_weights.setter
    def distillation_loss_weights(self, values):
        values = [check_weight(v, "distillation_loss_weights") for v in values]
        current = getattr(self, "_distillation_loss_weights", None)
        if current is None:
            self._distillation_loss_weights = [
                keras.Variable(v, trainable=False, dtype="float32", name=f"distillation_loss_weight_{i}")
                for i, v in enumerate(values)]
            return
        if len(values) != len(current):
            raise ValueError(f"`distillation_loss_weights` needs {len(current)} weights, got {len(values)}.")
        for variable, value in zip(current, values):
            variable.assign(value)

    @property
    def temperature(self):
        """The temperature of the `kopt.distill.LogitsDistillation` losses (None if there is none)."""
        return float(ops.convert_to_numpy(self._temperatures[0])) if self._temperatures else None

    @temperature.setter
    def temperature(self, value):
        if not self._temperatures:
            raise ValueError("This Distiller has no kopt.distill.LogitsDistillation loss to set a temperature for.")
        value = check_temperature(value)
        for variable in self._temperatures:
            variable.assign(value)
        for loss in self.distillation_losses:
            if isinstance(loss, LogitsDistillation):
                loss.temperature = value  # so that the saved config says it too

    def _check_teacher_frozen(self):
        if self.teacher.trainable or self.teacher.trainable_weights:
            raise ValueError(
                "The teacher must stay frozen, but `teacher.trainable` is True (set after the Distiller froze "
                "it): its weights would be trained as well. Set `distiller.teacher.trainable = False` and "
                "compile again.")

    def compile(self, optimizer="adam", loss=None, metrics=None, *, student_loss_fn=None, distillation_loss_fn=None,
                alpha=None, temperature=None, **kwargs):
        """Configures training (`keras.Model.compile`).

        The keras.io "Knowledge Distillation" example's `compile` arguments work
        here where kopt computes the same formula as the example,
        `alpha * student_loss_fn(y, s) + (1 - alpha) *
        distillation_loss_fn(softmax(t / T), softmax(s / T)) * T**2` (its current
        version; the 2020 one had no `T**2`); otherwise they raise an error that
        names kopt's argument to use. Arguments left
        out keep the Distiller's values (the example's defaults, alpha 0.1 and
        temperature 3, are not applied: kopt's temperature is 4 by default).

        Args:
            optimizer: the optimizer of the student.
            loss: the supervised loss on labels (a name, a `keras.losses.Loss`
                averaging over the batch, or a structure of them for several
                outputs). May be None when training only on unlabelled data.
            metrics: metrics of the student's outputs against the labels (they
                skip unlabelled samples).
            student_loss_fn: the keras.io example's name for `loss` (give one of
                the two).
            distillation_loss_fn: accepted only as the example uses it, Keras's
                KL divergence (`keras.losses.KLDivergence()` or
                `"kl_divergence"`), on a Distiller whose `distillation_losses` is
                one `kopt.distill.LogitsDistillation(from_logits=True)` (the
                default) with weight 1, and a student with one
                `(batch, classes)` output: that loss computes the same
                `T^2 * KL(softmax(t/T) || softmax(s/T))`, in log space (without
                `KLDivergence`'s clipping of probabilities to [1e-7, 1]). Other
                values raise a ValueError: pass `distillation_losses=` to the
                `Distiller` constructor instead.
            alpha: the example's weight of the student loss; sets
                `student_loss_weight` (a number in [0, 1]), which weights the
                distillation loss by `1 - alpha` as the example does.
            temperature: the example's softmax temperature; sets `temperature`
                (of the Distiller's `kopt.distill.LogitsDistillation` losses).
            **kwargs: passed to `keras.Model.compile` (`loss_weights`,
                `weighted_metrics`, `run_eagerly`, `steps_per_execution`,
                `jit_compile`, `auto_scale_loss`).
        """
        unknown = sorted(set(kwargs) - set(_MODEL_COMPILE_ARGUMENTS))
        if unknown:
            raise TypeError(
                f"Distiller.compile() got unexpected argument(s) {unknown}. It takes `optimizer`, `loss`, `metrics`, "
                f"the keras.io example's `student_loss_fn`, `distillation_loss_fn`, `alpha` and `temperature`, and "
                f"keras.Model.compile's {list(_MODEL_COMPILE_ARGUMENTS)}. The distillation itself is set in the "
                f"constructor: kopt.distill.Distiller(teacher, student, distillation_losses=..., "
                f"distillation_loss_weights=..., student_loss_weight=..., teacher_outputs=...).")
        self._check_teacher_frozen()
        # Every argument is checked before anything changes: a failed compile leaves the Distiller as it was.
        if student_loss_fn is not None:
            if loss is not None:
                raise ValueError(
                    "Give the supervised loss once: `loss` or `student_loss_fn` (the keras.io example's name for "
                    "`loss`), not both.")
            loss = student_loss_fn
        _check_reduction(loss, "student_loss_fn" if student_loss_fn is not None else "loss")
        if alpha is not None:
            alpha = check_weight(alpha, "alpha")
        if temperature is not None:
            temperature = check_temperature(temperature)
            if not self._temperatures:
                raise ValueError(
                    f"`temperature={temperature}` sets the temperature of the Distiller's "
                    f"kopt.distill.LogitsDistillation losses, and this Distiller has none (its `distillation_losses` "
                    f"are {self.distillation_losses}). Give the Distiller `distillation_losses="
                    f"kopt.distill.LogitsDistillation(temperature={temperature})` instead.")
        if distillation_loss_fn is not None:
            self._check_keras_io_distillation_loss(distillation_loss_fn)
        if alpha is not None:
            self.student_loss_weight = alpha
        if temperature is not None:
            self.temperature = temperature
        self._keras_io_distillation_loss = distillation_loss_fn is not None
        self._student_loss_fn = None if loss is None else keras.tree.map_structure(_loss_function, loss)
        self._student_loss_config = loss
        # keras.Model.compile, not keras.distillation.Distiller.compile, which requires a loss.
        keras.Model.compile(self, optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def _check_keras_io_distillation_loss(self, distillation_loss_fn):
        """Raises unless the keras.io example's `distillation_loss_fn` is the loss this Distiller computes."""
        how = ("kopt.distill.LogitsDistillation(temperature=T) is the example's "
               "`KLDivergence()(softmax(t / T), softmax(s / T)) * T**2`; for another function of the softened "
               "probabilities, subclass keras.distillation.DistillationLoss (its compute_loss(teacher_outputs, "
               "student_outputs) returning that value) and pass it as "
               "kopt.distill.Distiller(teacher, student, distillation_losses=...)")
        if not _is_kl_divergence(distillation_loss_fn):
            raise ValueError(
                f"`distillation_loss_fn={distillation_loss_fn!r}` has no kopt equivalent: kopt takes the "
                f"distillation loss as the constructor's `distillation_losses`, and `distillation_loss_fn` is "
                f"accepted only as keras.losses.KLDivergence() (the keras.io example's, averaging over the batch). "
                f"{how}.")
        losses, weights = self.distillation_losses, self.distillation_loss_weights
        if not (len(losses) == 1 and isinstance(losses[0], LogitsDistillation) and losses[0].from_logits
                and weights == [1.0]):
            raise ValueError(
                f"`distillation_loss_fn=KLDivergence()` stands for the keras.io example's single logits loss, but this "
                f"Distiller has distillation_losses={losses} with distillation_loss_weights={weights}, which compute "
                f"something else. Drop `distillation_loss_fn` from compile: the constructor's `distillation_losses` "
                f"are the distillation loss ({how}).")
        if getattr(self.student, "outputs", None):
            self._check_keras_io_outputs(self.student.outputs)

    def _check_keras_io_outputs(self, outputs):
        shapes = [tuple(output.shape) for output in keras.tree.flatten(outputs)]
        if len(shapes) != 1 or len(shapes[0]) != 2:
            raise ValueError(
                f"`distillation_loss_fn` (the keras.io example's) takes the softmax over axis 1 of one output of "
                f"shape (batch, classes); the student's outputs have shapes {shapes}, where kopt's "
                f"LogitsDistillation (softmax over the last axis, summed over outputs) computes something else. Drop "
                f"`distillation_loss_fn` from compile and set the loss with the constructor's `distillation_losses`.")

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["loss"] = keras.saving.serialize_keras_object(self._student_loss_config)
        return config

    def compile_from_config(self, config):
        # As keras.Model's, which leaves models with their own `compile` uncompiled after loading.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.student.built:  # the optimizer's slots, for its saved variables to load into
            self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        if self._student_features is None:
            return self.student(inputs, training=training)
        # The student's outputs and the features the distillation losses need, in one pass.
        return self._student_features(inputs, training=training)

    def _outputs(self, y_pred):
        return y_pred if self._student_features is None else y_pred[_FINAL]

    def teacher_predict(self, x):
        """The teacher's outputs (and the features the losses use) for a batch: a dict, inference mode."""
        if self._teacher_features is None:
            outputs = {_FINAL: self.teacher(x, training=False)}
        else:
            outputs = self._teacher_features(x, training=False)
        # Targets, not a path for gradients: no gradient reaches the teacher's variables.
        return keras.tree.map_structure(ops.stop_gradient, outputs)

    def predict_step(self, data):
        return self._outputs(super().predict_step(data))

    def _supervised_loss(self, labels, outputs, sample_weight):
        if labels is None:
            return ops.zeros((), "float32")
        if self._student_loss_fn is None:
            raise ValueError(
                "The data has labels but `compile` got no `loss`: pass `loss=` to `compile` (the supervised "
                "loss), or train on inputs alone (unlabelled transfer data).")
        total = ops.zeros((), "float32")
        for loss_fn, y_true, y_pred in zip(keras.tree.flatten(self._student_loss_fn), keras.tree.flatten(labels),
                                           keras.tree.flatten(outputs)):
            y_true, mask = _labeled(y_true)
            weights = mask
            if sample_weight is not None:
                weights = weights * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            values = _per_sample(loss_fn, y_true, y_pred)
            total = total + ops.sum(values * weights) / ops.maximum(ops.sum(mask), 1.0)
        return total

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        labels, cached = teacher_cache.split_targets(y)
        outputs = self._outputs(y_pred)
        student_features = y_pred if self._student_features is not None else {_FINAL: y_pred}
        teacher_features = cached if cached is not None else self.teacher_predict(x)

        if self._keras_io_distillation_loss:  # subclassed students are checked here, on their first batch
            self._check_keras_io_outputs(outputs)
        student_loss = self._supervised_loss(labels, outputs, sample_weight)
        distillation_loss = ops.zeros((), "float32")
        temperatures = iter(self._temperatures)
        for loss, weight in zip(self.distillation_losses, self._distillation_loss_weights):
            teacher_value = teacher_features[getattr(loss, "teacher_layer_name", None) or _FINAL]
            student_value = student_features[getattr(loss, "student_layer_name", None) or _FINAL]
            loss.validate_outputs(teacher_value, student_value)
            if isinstance(loss, LogitsDistillation):
                value = loss.compute_loss(teacher_value, student_value, temperature=next(temperatures))
            else:
                value = loss.compute_loss(teacher_value, student_value)
            distillation_loss = distillation_loss + weight * ops.cast(value, "float32")

        total = self._student_loss_weight * student_loss + (1.0 - self._student_loss_weight) * distillation_loss
        for regularization in self.student.losses:
            total = total + ops.cast(ops.sum(regularization), "float32")
        # Weighted by the batch's samples, as Keras weights the `loss` figure (the total, logged by the train and
        # test steps from the value returned here), so that the logged parts add up to the logged `loss`.
        samples = _batch_size(x, y_pred)
        self.student_loss_tracker.update_state(student_loss, sample_weight=samples)
        self.distillation_loss_tracker.update_state(distillation_loss, sample_weight=samples)
        return scale_loss_for_distribution(total)

    def reset_metrics(self):
        # keras.Model's: keras.distillation.Distiller's also resets the `total_loss` tracker removed in __init__.
        keras.Model.reset_metrics(self)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        labels, _ = teacher_cache.split_targets(y)
        if labels is None:  # unlabelled data: only the losses mean something
            return {name: value for name, value in self.get_metrics_result().items() if "loss" in name}
        # Unlabelled samples leave the batch (compiled `metrics`, unlike `weighted_metrics`, ignore sample
        # weights, so a zero weight would not hide them).
        keep = None
        for y_true in keras.tree.flatten(labels):
            mask = _labeled(y_true)[1] > 0
            keep = mask if keep is None else tf.logical_and(keep, mask)

        def labelled(value):
            return None if value is None else tf.boolean_mask(value, keep)

        labels = keras.tree.map_structure(labelled, labels)
        outputs = keras.tree.map_structure(labelled, self._outputs(y_pred))
        return super().compute_metrics(x, labels, outputs, sample_weight=labelled(sample_weight))

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", **kwargs):
        """`keras.Model.fit`; in cache mode the teacher's outputs are computed first (with a progress bar).

        `y` may be None (unlabelled transfer data) or hold `UNLABELED` (-1) for
        samples without a label. Everything else is as in `keras.Model.fit`.
        """
        self._check_teacher_frozen()
        if self.teacher_outputs == "cache":
            x, y = teacher_cache.attach(tf.function(self.teacher_predict, reduce_retracing=True), x, y, batch_size,
                                        verbose=verbose != 0)
        return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["teacher_outputs"] = self.teacher_outputs
        return config
