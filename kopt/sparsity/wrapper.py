"""`PruneLowMagnitude`: the layer wrapper that holds masks and prunes during training."""

import numbers

import keras
from keras import ops

from kopt._keras.scheduled_wrapper import ScheduledWrapper
from kopt.sparsity import _masks as masks_lib
from kopt.sparsity import _registry as registry
from kopt.sparsity.schedules import ConstantSparsity, PruningSchedule

_CALLBACK_ERROR = (
    "Layer '{name}' is being trained without the UpdatePruningStep callback, so its pruning step "
    "never starts. Add it to fit: `model.fit(..., callbacks=[kopt.sparsity.UpdatePruningStep()])`. "
    "In a custom training loop call `callback.set_model(model)` and `callback.on_train_begin()` "
    "once before the first step."
)


def validate_pruning_params(pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n):
    """Checks the pruning arguments shared by `prune_low_magnitude` and the wrapper.

    Returns:
        `(pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n)`,
        normalized (tuples of ints, upper-case pooling).
    """
    if not isinstance(pruning_schedule, PruningSchedule):
        raise ValueError(
            f"`pruning_schedule` must be a kopt.sparsity.PruningSchedule (e.g. ConstantSparsity(0.5, 0) "
            f"or PolynomialDecay(...)), got {pruning_schedule!r}."
        )
    block_size = _two_ints(block_size, "block_size", "e.g. block_size=(1, 4)")
    if min(block_size) < 1:
        raise ValueError(f"`block_size` entries must be >= 1, got {block_size}. Use (1, 1) for unstructured pruning.")
    if not isinstance(block_pooling_type, str) or block_pooling_type.upper() not in ("AVG", "MAX"):
        raise ValueError(f"`block_pooling_type` must be 'AVG' or 'MAX', got {block_pooling_type!r}.")
    if sparsity_m_by_n is not None:
        sparsity_m_by_n = _two_ints(sparsity_m_by_n, "sparsity_m_by_n", "e.g. sparsity_m_by_n=(2, 4)")
        m, n = sparsity_m_by_n
        if not 0 < m < n:
            raise ValueError(
                f"`sparsity_m_by_n`=({m}, {n}) must have 0 < m < n: m zeros in every n consecutive "
                "weights, e.g. (2, 4)."
            )
        if block_size != (1, 1):
            raise ValueError(
                "`block_size` and `sparsity_m_by_n` cannot be combined: m-by-n sparsity has its own "
                f"structure. Keep block_size=(1, 1) (got {block_size}) or drop sparsity_m_by_n."
            )
    return pruning_schedule, block_size, block_pooling_type.upper(), sparsity_m_by_n


def _two_ints(value, name, example):
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if (
        items is None
        or len(items) != 2
        or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items)
    ):
        raise ValueError(f"`{name}` must be a tuple of 2 integers ({example}), got {value!r}.")
    return tuple(int(i) for i in items)


@keras.saving.register_keras_serializable(package="kopt")
class PruneLowMagnitude(ScheduledWrapper):
    """Wraps a layer so that its weights are magnitude-pruned during training.

    For each prunable weight the wrapper keeps a 0/1 `mask` and the magnitude
    `threshold` as non-trainable weights, plus the `pruning_step`. In training,
    each call advances the step and, when the schedule says so, recomputes the
    masks from the magnitudes of the masked weights; every call (training or
    not) runs the layer on `weight * mask`. State lives in weights, so it saves
    in `.keras` files, checkpoints and resumes, and is mirrored by
    `tf.distribute`. Use `prune_low_magnitude` rather than this class directly.

    Losses the wrapped layer adds (its activity regularizer, `add_loss` in its
    `call`) are kept: they appear in `model.losses` and in the training loss as
    without the wrapper.

    Args:
        layer: the layer to prune: a supported Keras layer (Dense, EinsumDense,
            Conv*, Conv*Transpose, DepthwiseConv*, SeparableConv*, Embedding,
            MultiHeadAttention, LSTM, GRU, SimpleRNN, RNN with such cells) or a
            `PrunableLayer`. A DepthwiseConv layer wrapped here is pruned
            (`prune_low_magnitude` leaves them dense in models by default).
        pruning_schedule: a `PruningSchedule`; `ConstantSparsity(0.5, 0)` by default.
        block_size: `(height, width)` of blocks pruned together (rank-2 weights only).
        block_pooling_type: "AVG" or "MAX": how a block's magnitude is pooled.
        sparsity_m_by_n: `(m, n)` for m zeros in every n consecutive input-channel
            weights (e.g. `(2, 4)`); masks are set at the first training step.
        **kwargs: passed to `keras.layers.Wrapper` (e.g. `name`).

    Example:

    ```python
    layer = kopt.sparsity.PruneLowMagnitude(
        keras.layers.Dense(8), kopt.sparsity.ConstantSparsity(0.5, 0))
    ```
    """

    def __init__(
        self,
        layer,
        pruning_schedule=None,
        block_size=(1, 1),
        block_pooling_type="AVG",
        sparsity_m_by_n=None,
        **kwargs,
    ):
        if pruning_schedule is None:
            pruning_schedule = ConstantSparsity(0.5, 0)
        (self.pruning_schedule, self.block_size, self.block_pooling_type, self.sparsity_m_by_n) = (
            validate_pruning_params(pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n)
        )
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(
                f"`layer` must be a keras.layers.Layer, got {type(layer).__name__}: {layer!r}."
            )
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(
                f"Layer '{layer.name}' is already pruned (it is a PruneLowMagnitude wrapper); "
                "pruning it twice would stack masks. Use it as it is, or strip_pruning() first."
            )
        if not registry.is_prunable(layer):
            raise ValueError(
                f"Layer '{layer.name}' ({layer.__class__.__name__}) cannot be pruned: kopt prunes "
                + ", ".join(sorted({c.__name__ for c in registry.SUPPORTED_LAYERS}))
                + " (recurrent layers whose cells are LSTMCell, GRUCell or SimpleRNNCell). For a custom "
                "layer or RNN cell, subclass kopt.sparsity.PrunableLayer and return the weights to prune "
                "from get_prunable_weights()."
            )
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, self.pruning_schedule, **kwargs)

    # -- building ---------------------------------------------------------------------------

    def build(self, input_shape=None):
        self.build_wrapped_layer(input_shape, "wrapped", "prune")
        labelled = registry.labelled_prunable_weights(self.layer)
        self._pruned_weights = [variable for variable, _ in labelled]
        if not self._pruned_weights:
            raise ValueError(
                f"Layer '{self.layer.name}' returned no weights from get_prunable_weights(); "
                "there is nothing to prune."
            )
        # Under tf.distribute every replica updates its own copy of the pruning state in the
        # training step (aggregation "none": no merge_call, so no hand-over between replica
        # threads in the middle of the forward pass, which would mix the replicas' `add_loss`
        # losses in Keras's per-layer loss lists). The copies stay identical: each replica
        # computes the masks from the same mirrored weights at the same step.
        self.masks, self.thresholds, self.weight_labels = [], [], []
        for weight, label in labelled:
            self._check_structure(weight)
            self.weight_labels.append(label)
            stem = label.replace("/", "_")
            self.masks.append(self.add_weight(
                name=f"{stem}_mask", shape=weight.shape, dtype=weight.dtype, initializer="ones",
                trainable=False, aggregation="none",
            ))
            self.thresholds.append(self.add_weight(
                name=f"{stem}_threshold", shape=(), dtype=weight.dtype, initializer="zeros",
                trainable=False, aggregation="none",
            ))
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), dtype="int64", initializer=keras.initializers.Constant(-1),
            trainable=False, aggregation="none",
        )
        self.built = True

    def _check_structure(self, weight):
        where = f"layer '{self.layer.name}' weight '{weight.name}' of shape {tuple(weight.shape)}"
        if self.sparsity_m_by_n is not None:
            m, n = self.sparsity_m_by_n
            if len(weight.shape) not in (2, 4):
                raise ValueError(
                    f"`sparsity_m_by_n` needs a rank-2 (Dense) or rank-4 (Conv2D) weight; {where} has rank "
                    f"{len(weight.shape)}. Leave this layer out of m-by-n pruning."
                )
            channels = weight.shape[0] if len(weight.shape) == 2 else weight.shape[2]
            if channels % n:
                raise ValueError(
                    f"`sparsity_m_by_n`=({m}, {n}) needs the input-channel count to be a multiple of {n}; "
                    f"{where} has {channels} input channels. Use a layer width divisible by {n} or leave "
                    "this layer unpruned."
                )
        elif self.block_size != (1, 1):
            if len(weight.shape) != 2:
                raise ValueError(
                    f"`block_size`={self.block_size} needs rank-2 weights (Dense, Embedding); {where} has "
                    f"rank {len(weight.shape)}. Use block_size=(1, 1) for this layer."
                )

    # -- training ---------------------------------------------------------------------------

    def _new_mask(self, weight):
        if self.sparsity_m_by_n is not None:
            return masks_lib.m_by_n_mask(weight, self.sparsity_m_by_n)
        _, sparsity = self.pruning_schedule(self.pruning_step)
        if self.block_size != (1, 1):
            return masks_lib.block_mask(weight, sparsity, self.block_size, self.block_pooling_type)
        return masks_lib.magnitude_mask(weight, sparsity)

    def update_masks(self):
        """Advances the pruning step and recomputes the masks if the schedule says so."""
        self.pruning_step.assign(ops.maximum(self.pruning_step, 0) + 1)
        if self.sparsity_m_by_n is not None:
            should_prune = ops.equal(self.pruning_step, 1)  # m-by-n masks are set once, as in tfmot.
        else:
            should_prune, _ = self.pruning_schedule(self.pruning_step)

        def recompute():
            new = [self._new_mask(w * m) for w, m in zip(self._pruned_weights, self.masks)]
            return [t for t, _ in new], [m for _, m in new]

        def keep():
            return [ops.convert_to_tensor(t) for t in self.thresholds], [ops.convert_to_tensor(m) for m in self.masks]

        thresholds, masks = ops.cond(should_prune, recompute, keep)
        for variable, value in zip(self.thresholds + self.masks, list(thresholds) + list(masks)):
            variable.assign(value)

    def effective_weights(self):
        """`[(variable, value)]`: each pruned weight with its mask applied (what the layer computes with)."""
        return [(w, w * ops.cast(m, w.dtype)) for w, m in zip(self._pruned_weights, self.masks)]

    def apply_masks(self):
        """Writes `weight * mask` into the wrapped layer's weights (done at each epoch end)."""
        for weight, mask in zip(self._pruned_weights, self.masks):
            weight.assign(weight * ops.cast(mask, weight.dtype))

    callback_error = _CALLBACK_ERROR

    def training_step(self):
        self.update_masks()

    def get_config(self):
        config = super().get_config()
        config.update({
            "block_size": self.block_size,
            "block_pooling_type": self.block_pooling_type,
            "sparsity_m_by_n": self.sparsity_m_by_n,
        })
        return config
