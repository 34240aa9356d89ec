"""Distillation losses: Hinton's logits loss (`LogitsDistillation`) and `FeatureDistillation`.

Both are `keras.distillation.DistillationLoss` objects, so they also work in Keras's own `Distiller`.
"""

import numbers

import keras
from keras import ops

# Probabilities are clipped to this before their log is taken (`from_logits=False`).
_EPSILON = 1e-7


def check_temperature(value, name="temperature"):
    """Returns `value` as a float if it is a valid softmax temperature (a number > 0), else raises."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(
            f"`{name}` must be a number > 0 (the softmax temperature; 2 to 8 is usual), got {value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="kopt")
class LogitsDistillation(keras.distillation.DistillationLoss):
    """Hinton's distillation loss between the teacher's and the student's outputs.

    `T^2 * KL(softmax(t / T) || softmax(s / T))`, summed over the classes (last
    axis) and averaged over the batch (and any other axis), as in Hinton, Vinyals
    and Dean, "Distilling the Knowledge in a Neural Network" (2015). The `T^2`
    factor keeps the gradients' scale independent of the temperature.

    Keras's own `keras.distillation.LogitsDistillation` with its default
    `loss="kl_divergence"` computes something else (it clips `logits / T` to
    [1e-7, 1], with no softmax and no `T^2`); this class is the correct default.
    Multi-output models: the loss is applied to every output and summed.

    Args:
        temperature: softmax temperature `T` (a number > 0). Higher values soften
            the teacher's distribution; 2 to 8 is usual. `kopt.distill.Distiller`
            can change it during training (`DistillationSchedule`).
        from_logits: True if the models output logits (no final softmax). With
            False, the outputs are probabilities (e.g. a softmax layer) and their
            logarithms are used as logits, which gives the same loss.

    Example:

    ```python
    import numpy as np
    import kopt
    loss = kopt.distill.LogitsDistillation(temperature=4.0)
    teacher = np.array([[2.0, 1.0, 0.1], [0.5, 3.0, -1.0]])
    student = np.array([[1.0, 1.5, 0.2], [0.0, 2.0, 0.5]])
    value = float(loss.compute_loss(teacher, student))  # 0.3563
    ```
    """

    def __init__(self, temperature=4.0, from_logits=True):
        self.temperature = check_temperature(temperature)
        if not isinstance(from_logits, bool):
            raise ValueError(f"`from_logits` must be True or False, got {from_logits!r}.")
        self.from_logits = from_logits

    def _logits(self, values):
        values = ops.cast(values, "float32")
        if self.from_logits:
            return values
        return ops.log(ops.clip(values, _EPSILON, 1.0))

    def _one_output(self, teacher, student, temperature):
        teacher = self._logits(teacher) / temperature
        student = self._logits(student) / temperature
        teacher_log_probs = ops.log_softmax(teacher, axis=-1)
        student_log_probs = ops.log_softmax(student, axis=-1)
        kl = ops.sum(ops.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)
        return ops.mean(kl) * temperature**2

    def compute_loss(self, teacher_outputs, student_outputs, temperature=None, **kwargs):
        """The loss, a scalar.

        Args:
            teacher_outputs: the teacher's logits (or probabilities): a tensor or a
                structure of tensors.
            student_outputs: the student's, with the same structure and shapes.
            temperature: overrides `self.temperature` (a number or a scalar
                tensor; `Distiller` passes its scheduled value).
            **kwargs: ignored (the `DistillationLoss` interface).
        """
        temperature = self.temperature if temperature is None else ops.cast(temperature, "float32")
        losses = [self._one_output(t, s, temperature)
                  for t, s in zip(keras.tree.flatten(teacher_outputs), keras.tree.flatten(student_outputs))]
        return losses[0] if len(losses) == 1 else ops.sum(ops.stack(losses))

    def validate_outputs(self, teacher_outputs, student_outputs):
        keras.tree.assert_same_structure(teacher_outputs, student_outputs)
        for t, s in zip(keras.tree.flatten(teacher_outputs), keras.tree.flatten(student_outputs)):
            if tuple(t.shape[1:]) != tuple(s.shape[1:]):
                raise ValueError(
                    f"LogitsDistillation needs teacher and student outputs of the same shape, got teacher "
                    f"{tuple(t.shape)} and student {tuple(s.shape)}. Give the student the teacher's classes.")

    def get_config(self):
        return {"temperature": self.temperature, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"LogitsDistillation(temperature={self.temperature}, from_logits={self.from_logits})"


@keras.saving.register_keras_serializable(package="kopt")
class FeatureDistillation(keras.distillation.FeatureDistillation):
    """Matches an intermediate feature map of the student to one of the teacher.

    The loss (`"mse"` by default) compares the outputs of two named layers,
    averaged over the batch. When their widths (last axis) differ, `projection`
    maps the student's features to the teacher's width with a learned layer that
    `kopt.distill.Distiller` trains along with the student; it is not part of the
    student, so `distiller.student` stays as it was built.

    Args:
        teacher_layer_name: name of a layer of the teacher (Functional or
            Sequential model).
        student_layer_name: name of a layer of the student.
        loss: a loss name (`"mse"`, `"mae"`, `"cosine_similarity"`, ...) or a
            `keras.losses.Loss`, called as `loss(teacher_features, student_features)`.
        projection: None (the shapes must match), `"dense"` (a learned
            `Dense(teacher width, use_bias=False)` on the last axis, i.e. a 1x1
            convolution for feature maps), or a Keras layer of your own that maps
            student features to the teacher's shape.

    Example:

    ```python
    import keras
    import kopt
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, name="t_hidden"),
                                keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="s_hidden"),
                                keras.layers.Dense(3)])
    distiller = kopt.distill.Distiller(
        teacher, student,
        distillation_losses=[kopt.distill.LogitsDistillation(),
                             kopt.distill.FeatureDistillation("t_hidden", "s_hidden", projection="dense")],
        distillation_loss_weights=[1.0, 0.5])
    ```
    """

    def __init__(self, teacher_layer_name, student_layer_name, loss="mse", projection=None):
        for argument, value in (("teacher_layer_name", teacher_layer_name), ("student_layer_name", student_layer_name)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{argument}` must be the name of a layer (a non-empty string), got {value!r}.")
        if not (projection is None or projection == "dense" or isinstance(projection, keras.layers.Layer)):
            raise ValueError(
                f"`projection` must be None, 'dense' or a keras layer, got {projection!r}.")
        super().__init__(loss=loss, teacher_layer_name=teacher_layer_name, student_layer_name=student_layer_name)
        self.projection = projection
        # The layer that maps student features to the teacher's width (None without a projection);
        # built by `validate_model_compatibility`, trained by the Distiller.
        self.projection_layer = projection if isinstance(projection, keras.layers.Layer) else None

    def validate_model_compatibility(self, teacher, student):
        super().validate_model_compatibility(teacher, student)
        teacher_shape = tuple(teacher.get_layer(self.teacher_layer_name).output.shape)
        student_shape = tuple(student.get_layer(self.student_layer_name).output.shape)
        if self.projection == "dense" and self.projection_layer is None:
            self.projection_layer = keras.layers.Dense(
                teacher_shape[-1], use_bias=False, name=f"projection_{self.student_layer_name}_to_"
                f"{self.teacher_layer_name}")
        if self.projection_layer is not None:
            if not self.projection_layer.built:
                self.projection_layer.build(student_shape)
            projected = tuple(self.projection_layer.compute_output_shape(student_shape))
        else:
            projected = student_shape
        if projected[1:] != teacher_shape[1:]:
            fix = ("give `projection=\"dense\"` to learn a map to the teacher's width" if projected[:-1] == teacher_shape[:-1]
                   else "pick layers whose feature maps have the same spatial size, or pass a projection layer "
                        "that maps one to the other")
            raise ValueError(
                f"FeatureDistillation: the student layer '{self.student_layer_name}' gives features of shape "
                f"{projected} but the teacher layer '{self.teacher_layer_name}' gives {teacher_shape}: {fix}.")

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        if self.projection_layer is not None:
            student_outputs = self.projection_layer(student_outputs)
        return super().compute_loss(teacher_outputs, student_outputs, **kwargs)

    def validate_outputs(self, teacher_outputs, student_outputs):
        pass  # shapes were checked against the models in `validate_model_compatibility`

    def get_config(self):
        config = super().get_config()
        config["projection"] = (keras.saving.serialize_keras_object(self.projection)
                                if isinstance(self.projection, keras.layers.Layer) else self.projection)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.losses.deserialize(config["loss"])
        if isinstance(config.get("projection"), dict):
            config["projection"] = keras.saving.deserialize_keras_object(config["projection"])
        return cls(**config)
