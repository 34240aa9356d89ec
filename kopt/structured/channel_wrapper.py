"""`ChannelPruneWrapper`: a layer computing with some of its output filters and input rows masked to zero."""

import keras
from keras import ops

from kopt._keras.scheduled_wrapper import ScheduledWrapper
from kopt.sparsity.schedules import PruningSchedule
from kopt.structured._importance import kernel_of, output_axis

L = keras.layers


def _input_axis(layer):
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return -1
    if isinstance(layer, L.Dense):
        return 0
    return -2


def _shaped(mask, rank, axis):
    shape = [1] * rank
    shape[axis] = -1
    return ops.reshape(mask, shape)


@keras.saving.register_keras_serializable(package="kopt")
class ChannelPruneWrapper(ScheduledWrapper):
    """Masks whole channels of one layer during training (made by `prune_channels_low_magnitude`).

    The layer computes with its kernel's output filters (and bias entries)
    multiplied by `output_mask`, and its kernel's input rows multiplied by
    `input_mask`: a channel masked in every layer of its group is ignored by
    every layer that reads it, so `kopt.structured.shrink` can remove it with
    the outputs unchanged. The masks are weights (saved with the model); which
    channels they mask is decided for the whole group at once by
    `UpdatePruningStep`, from the channel ids below.

    Args:
        layer: the layer (Conv*, Dense, SeparableConv*, Embedding).
        pruning_schedule: a `kopt.sparsity` schedule: the fraction of each
            group's channels masked at each step.
        output_classes: channel ids of the layer's output channels (producers),
            or None.
        output_groups: the group of each output channel, or None.
        input_classes: channel ids of the kernel's input rows (readers), or None.
        importance: "l1" or "l2".
        round_to: keep a multiple of this many channels per group.
        **kwargs: passed to `keras.layers.Wrapper`.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    pruned = kopt.structured.prune_channels_low_magnitude(model)
    assert type(pruned.layers[0]).__name__ == "ChannelPruneWrapper"
    ```
    """

    def __init__(self, layer, pruning_schedule, output_classes=None, output_groups=None, input_classes=None,
                 importance="l2", round_to=8, **kwargs):
        if not isinstance(pruning_schedule, PruningSchedule):
            raise ValueError(f"`pruning_schedule` must be a kopt.sparsity schedule, got {pruning_schedule!r}.")
        kwargs.setdefault("name", f"prune_channels_{layer.name}")
        super().__init__(layer, pruning_schedule, **kwargs)
        self.output_classes = None if output_classes is None else [int(c) for c in output_classes]
        self.output_groups = None if output_groups is None else [int(g) for g in output_groups]
        self.input_classes = None if input_classes is None else [int(c) for c in input_classes]
        self.importance = importance
        self.round_to = int(round_to or 0)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.output_mask = None if self.output_classes is None else self.add_weight(
            name="output_mask", shape=(len(self.output_classes),), initializer="ones", trainable=False)
        self.input_mask = None if self.input_classes is None else self.add_weight(
            name="input_mask", shape=(len(self.input_classes),), initializer="ones", trainable=False)
        self.pruning_step = self.add_weight(name="pruning_step", shape=(), dtype="int64",
                                            initializer=keras.initializers.Constant(-1), trainable=False)
        self.built = True

    def effective_weights(self):
        """`[(variable, value)]`: the kernel (and bias) with the masked channels at zero."""
        kernel = kernel_of(self.layer)
        value = kernel
        if self.output_mask is not None:
            value = value * _shaped(ops.cast(self.output_mask, kernel.dtype), len(kernel.shape),
                                    output_axis(self.layer))
        if self.input_mask is not None:
            value = value * _shaped(ops.cast(self.input_mask, kernel.dtype), len(kernel.shape),
                                    _input_axis(self.layer))
        result = [(kernel, value)]
        bias = getattr(self.layer, "bias", None)
        if bias is not None and self.output_mask is not None:
            result.append((bias, bias * ops.cast(self.output_mask, bias.dtype)))
        return result

    callback_error = ("'{name}' masks channels during training, and the masks advance only with the "
                      "kopt.sparsity.UpdatePruningStep() callback: pass callbacks=[kopt.sparsity.UpdatePruningStep()] "
                      "to fit.")

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_classes": self.output_classes, "output_groups": self.output_groups,
            "input_classes": self.input_classes, "importance": self.importance, "round_to": self.round_to,
        })
        return config
