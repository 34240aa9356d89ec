"""Fake quantizers: what TFLite's int8 kernels will do, simulated in float during training.

Both quantizers are thin policies around `keras.quantizers.fake_quant_with_min_max_vars`
(which lowers to TensorFlow's FakeQuant ops, the ones the TFLite converter reads). Their
state (ranges) is created by the layer that owns them, as weights, so it saves, loads and
distributes like any other weight.
"""

import keras
from keras import ops


class Quantizer:
    """Base class of kopt quantizers.

    A quantizer creates its state with `build(layer, shape, name)` (weights of `layer`) and
    fake-quantizes with `__call__(x, training, state)`.

    Example:

    ```python
    class FixedRange(kopt.quantization.Quantizer):
        def __call__(self, x, training, state):
            return keras.quantizers.fake_quant_with_min_max_vars(x, -1.0, 1.0)

    y = FixedRange()(np.linspace(-2, 2, 5).astype("float32"), False, {})
    ```
    """

    def build(self, layer, shape, name):
        return {}

    def __call__(self, x, training, state):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(type(self).__name__)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="kopt")
class WeightQuantizer(Quantizer):
    """Symmetric, narrow-range weight quantizer (TFLite's int8 weight spec).

    The range is `[-max|w|, max|w|]`, per tensor or per output channel, recomputed
    from the weight at every training step and kept in weights for inference.

    Args:
        num_bits: bit width (8).
        per_axis: quantize each slice along `axis` with its own range.
        axis: the channel axis of the weight (e.g. -1 for a Conv2D kernel).

    Example:

    ```python
    quantizer = kopt.quantization.WeightQuantizer(per_axis=True, axis=-1)
    ```
    """

    def __init__(self, num_bits=8, per_axis=False, axis=-1):
        self.num_bits = int(num_bits)
        self.per_axis = bool(per_axis)
        self.axis = int(axis)

    def _channels(self, shape):
        return (shape[self.axis],) if self.per_axis else ()

    def build(self, layer, shape, name):
        channels = self._channels(shape)

        def var(suffix, value):
            return layer.add_weight(
                name=f"{name}_{suffix}", shape=channels, initializer=keras.initializers.Constant(value),
                trainable=False, aggregation="mean",
            )

        return {"min": var("min", -1.0), "max": var("max", 1.0)}

    def assign_range(self, w, state):
        """Sets the kept range `[-max|w|, max|w|]` from the weight `w`."""
        bound = ops.maximum(ops.cast(self.range_of(w), state["max"].dtype), 1e-8)
        state["max"].assign(bound)
        state["min"].assign(-bound)

    def range_of(self, w):
        """`max|w|` per channel (or per tensor): the symmetric range of `w`."""
        if self.per_axis:
            axis = self.axis % len(w.shape)
            reduce_axes = tuple(i for i in range(len(w.shape)) if i != axis)
            ranges = ops.max(ops.abs(w), axis=reduce_axes)
            # A channel that is (nearly) all zero, e.g. after pruning, would get a scale so small
            # that TFLite's int32 bias (scale = input scale x weight scale) overflows: give it the
            # largest channel's range instead. Its weights quantize to zero either way.
            largest = ops.max(ranges)
            return ops.where(ranges <= 1e-6 * largest, largest, ranges)
        return ops.max(ops.abs(w))

    def __call__(self, w, training, state):
        if training:
            self.assign_range(w, state)
        # The kept variables go straight into the op: after freezing they are the constants
        # the TFLite converter needs to turn FakeQuant into int8 quantization parameters.
        return keras.quantizers.fake_quant_with_min_max_vars(
            w, state["min"], state["max"], num_bits=self.num_bits, narrow_range=True,
            axis=self.axis % len(w.shape) if self.per_axis else None,
        )

    def get_config(self):
        return {"num_bits": self.num_bits, "per_axis": self.per_axis, "axis": self.axis}


@keras.saving.register_keras_serializable(package="kopt")
class ActivationQuantizer(Quantizer):
    """Asymmetric per-tensor activation quantizer with moving-average ranges.

    In training, the batch range (widened to include 0) is averaged into the kept
    range with `ema_decay`; the first training batch sets it directly. In inference
    the kept range is used.

    Args:
        num_bits: bit width (8).
        ema_decay: decay of the moving average of the ranges.
        init_min: initial range minimum (used until the first training batch).
        init_max: initial range maximum.

    Example:

    ```python
    quantizer = kopt.quantization.ActivationQuantizer(ema_decay=0.99)
    ```
    """

    def __init__(self, num_bits=8, ema_decay=0.99, init_min=-6.0, init_max=6.0):
        self.num_bits = int(num_bits)
        self.ema_decay = float(ema_decay)
        self.init_min = float(init_min)
        self.init_max = float(init_max)

    def build(self, layer, shape, name):
        def var(suffix, value):
            return layer.add_weight(
                name=f"{name}_{suffix}", shape=(), initializer=keras.initializers.Constant(value),
                trainable=False, aggregation="mean",
            )

        return {"min": var("min", self.init_min), "max": var("max", self.init_max), "seen": var("seen", 0.0)}

    def __call__(self, x, training, state):
        if training:
            x32 = ops.cast(x, "float32")
            batch_min = ops.minimum(ops.min(x32), 0.0)
            batch_max = ops.maximum(ops.max(x32), 0.0)
            seen = ops.convert_to_tensor(state["seen"]) > 0
            decay = self.ema_decay
            low = ops.where(seen, state["min"] * decay + batch_min * (1 - decay), batch_min)
            high = ops.where(seen, state["max"] * decay + batch_max * (1 - decay), batch_max)
            state["min"].assign(low)
            state["max"].assign(ops.maximum(high, low + 1e-6))
            state["seen"].assign(1.0)
        return keras.quantizers.fake_quant_with_min_max_vars(x, state["min"], state["max"], num_bits=self.num_bits)

    def get_config(self):
        return {"num_bits": self.num_bits, "ema_decay": self.ema_decay,
                "init_min": self.init_min, "init_max": self.init_max}
