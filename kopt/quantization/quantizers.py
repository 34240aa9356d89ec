"""Fake quantizers: what TFLite's int8 kernels will do, simulated in float during training.

tfmot's three range policies, with tfmot's signatures and semantics:

- `LastValueQuantizer`: the range of the last training batch (weights);
- `MovingAverageQuantizer`: a moving average of the batch ranges (activations);
- `AllValuesQuantizer`: the running min/max of every value seen.

All are thin policies around `keras.quantizers.fake_quant_with_min_max_vars` (which
lowers to TensorFlow's FakeQuant ops, the ones the TFLite converter reads). Their state
(ranges) is created by the layer that owns them, as weights, so it saves, loads and
distributes like any other weight. `WeightQuantizer` and `ActivationQuantizer` are the
two settings kopt's default scheme uses.
"""

import functools
import inspect
import numbers

import keras
from keras import ops

from kopt._keras.distribution import cross_replica_range

# Narrowest range kept: an all-zero tensor would otherwise get a zero scale, which TFLite's int32
# bias (scale = input scale x weight scale) and requantization multipliers cannot represent.
_MIN_WIDTH = 1e-6


def _either_order(build, tfmot_order):
    """Wraps `build` so it accepts kopt's `(layer, shape, name)` and tfmot's `(tensor_shape, name, layer)`."""

    @functools.wraps(build)
    def adapted(self, *args, **kwargs):
        if len(args) == 3:
            if isinstance(args[2], keras.layers.Layer) and not isinstance(args[0], keras.layers.Layer):
                args = (args[2], args[0], args[1])  # tfmot's order -> (layer, shape, name)
            if tfmot_order:
                layer, shape, name = args
                args = (shape, name, layer)
        return build(self, *args, **kwargs)

    return adapted


class Quantizer:
    """Base class of kopt quantizers (tfmot's `Quantizer` interface).

    A quantizer creates its state with `build(layer, shape, name)` (weights of `layer`,
    returned as a dict) and fake-quantizes with `__call__(inputs, training, weights)`,
    where `weights` is that dict. Subclasses written for tfmot, whose `build` takes
    `(tensor_shape, name, layer)`, work unchanged: `build` accepts either order.

    Example:

    ```python
    class FixedRange(kopt.quantization.Quantizer):
        def __call__(self, x, training, weights):
            return keras.quantizers.fake_quant_with_min_max_vars(x, -1.0, 1.0)

    y = FixedRange()(np.linspace(-2, 2, 5).astype("float32"), False, {})
    ```
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        build = cls.__dict__.get("build")
        if build is not None:
            params = list(inspect.signature(build).parameters)
            cls.build = _either_order(build, tfmot_order=len(params) > 1 and params[1] == "tensor_shape")

    def build(self, layer, shape, name):
        return {}

    def __call__(self, inputs, training, weights):
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


class _RangeQuantizer(Quantizer):
    """A `[min, max]` range per tensor (or per channel) kept in two weights, and a policy to update it."""

    init_min, init_max = -6.0, 6.0  # tfmot's initial range

    def __init__(self, num_bits, per_axis, symmetric, narrow_range, *, axis=-1):
        if isinstance(num_bits, bool) or not isinstance(num_bits, numbers.Integral) or not 2 <= num_bits <= 16:
            raise ValueError(f"`num_bits` must be an integer from 2 to 16 (FakeQuant's bit widths), got {num_bits!r}.")
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(f"`axis` must be an integer (the channel axis, e.g. -1), got {axis!r}.")
        self.num_bits = int(num_bits)
        self.per_axis = bool(per_axis)
        self.symmetric = bool(symmetric)
        self.narrow_range = bool(narrow_range)
        self.axis = int(axis)

    def _channels(self, shape, name):
        if not self.per_axis:
            return ()
        if not shape or not -len(shape) <= self.axis < len(shape):
            raise ValueError(
                f"{type(self).__name__}(per_axis=True, axis={self.axis}) cannot quantize '{name}' of shape "
                f"{tuple(shape) if shape else ()} per channel: kopt quantizes activations and outputs per tensor, "
                "and a weight needs the channel `axis`. Use per_axis=False, or an `axis` within the weight's rank.")
        return (shape[self.axis],)

    def build(self, layer, shape, name):
        channels = self._channels(shape, name)

        def var(suffix, value):
            return layer.add_weight(
                name=f"{name}_{suffix}", shape=channels, initializer=keras.initializers.Constant(value),
                trainable=False, aggregation="none", dtype="float32", autocast=False,  # float32 under mixed precision
            )

        return {"min": var("min", self.init_min), "max": var("max", self.init_max)}

    def batch_range(self, x):
        """The range of `x` as tfmot computes it: `(min, max)`, per tensor or per channel.

        Asymmetric: `[min(x, 0), max(x, 0)]`. Symmetric: the smallest range around
        the values whose ends keep tfmot's `min_max_ratio`, so that zero is a grid
        point: `[-m, m]` (m = max|x|) with narrow_range, else `low = -high * 2^bits
        / (2^bits - 2)` (e.g. -128..127 steps for 8 bits).
        """
        x = ops.cast(x, "float32")
        if self.per_axis:
            axis = self.axis % len(x.shape)
            reduce_axes = tuple(i for i in range(len(x.shape)) if i != axis)
            low, high = ops.min(x, axis=reduce_axes), ops.max(x, axis=reduce_axes)
        else:
            low, high = ops.min(x), ops.max(x)
        if self.symmetric:
            ratio = -1.0 if self.narrow_range else -((1 << self.num_bits) - 2) / (1 << self.num_bits)
            low, high = ops.minimum(low, high / ratio), ops.maximum(high, low * ratio)
        else:
            low, high = ops.minimum(low, 0.0), ops.maximum(high, 0.0)
        if self.per_axis:
            # A channel that is (nearly) all zero, e.g. after pruning, would get a scale so small that
            # TFLite's int32 bias overflows: give it the widest channel's range. Its values quantize to
            # zero either way. (Decided before the floor below, which would blur "all zero".)
            width = high - low
            widest = ops.argmax(width)
            degenerate = width <= 1e-6 * ops.max(width)
            low = ops.where(degenerate, ops.take(low, widest), low)
            high = ops.where(degenerate, ops.take(high, widest), high)
        if self.symmetric:
            high = ops.maximum(high, _MIN_WIDTH)  # a no-op unless x is all zero
            low = ops.minimum(low, high / ratio)
        else:
            high = ops.maximum(high, low + _MIN_WIDTH)  # a no-op unless x is all zero
        return low, high

    def training_range(self, x):
        """The range of the training batch `x` for `update_range`: `batch_range(x)`, across replicas.

        Under a `tf.distribute` strategy each replica sees part of the global batch: the range is
        the widest of the replicas' ranges (one all-gather), exactly what one device would measure
        on the whole batch. Every replica then keeps the same range.
        """
        return cross_replica_range(*self.batch_range(x))

    def update_range(self, x, weights):
        """Updates the kept range from a training batch `x` (the policy)."""
        raise NotImplementedError

    def __call__(self, inputs, training, weights):
        # Ranges and fake quantization stay float32 under a mixed precision policy (bfloat16 cannot even
        # hold an int8 grid step exactly); the result goes back in the layer's compute dtype.
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        x = inputs if dtype == "float32" else ops.cast(inputs, "float32")
        if training:
            self.update_range(x, weights)
        # The kept variables go straight into the op: after freezing they are the constants the
        # TFLite converter needs to turn FakeQuant into int8 quantization parameters.
        y = keras.quantizers.fake_quant_with_min_max_vars(
            x, weights["min"], weights["max"], num_bits=self.num_bits, narrow_range=self.narrow_range,
            axis=self.axis % len(x.shape) if self.per_axis else None,
        )
        return y if dtype == "float32" else ops.cast(y, dtype)

    def get_config(self):
        return {"num_bits": self.num_bits, "per_axis": self.per_axis, "symmetric": self.symmetric,
                "narrow_range": self.narrow_range, "axis": self.axis}


@keras.saving.register_keras_serializable(package="kopt")
class LastValueQuantizer(_RangeQuantizer):
    """Quantizes with the range of the last training batch (tfmot's `LastValueQuantizer`).

    In training the kept range becomes the batch's range (see `batch_range`); in
    inference the kept range is used. kopt also sets it from the weight when
    `quantize_apply` wraps a built layer, so an untrained QAT model is already
    right.

    Args:
        num_bits: bit width (2 to 16; 8 for TFLite int8).
        per_axis: one range per slice along `axis` (tfmot: the last axis).
        symmetric: a range centred on zero instead of `[min(x, 0), max(x, 0)]`.
        narrow_range: use `[1, 2^bits - 1]` (e.g. int8 -127..127) instead of
            `[0, 2^bits - 1]`.
        axis: (kopt, keyword-only) the channel axis when `per_axis`, e.g. -2 for
            a DepthwiseConv2D kernel.

    Example:

    ```python
    quantizer = kopt.quantization.LastValueQuantizer(
        num_bits=8, per_axis=False, symmetric=True, narrow_range=True)
    ```
    """

    def update_range(self, x, weights):
        low, high = self.training_range(x)
        weights["min"].assign(ops.cast(low, weights["min"].dtype))
        weights["max"].assign(ops.cast(high, weights["max"].dtype))

    def assign_range(self, w, weights):
        """Sets the kept range from the tensor `w` (used for weights by `quantize_apply`)."""
        self.update_range(w, weights)


@keras.saving.register_keras_serializable(package="kopt")
class MovingAverageQuantizer(_RangeQuantizer):
    """Quantizes with a moving average of the batch ranges (tfmot's `MovingAverageQuantizer`).

    In training each batch range `r` (see `batch_range`) updates the kept range
    `k` to `k * ema_decay + r * (1 - ema_decay)`, starting from `[-6, 6]` with
    decay 0.999 as in tfmot; in inference the kept range is used.

    Args:
        num_bits: bit width (2 to 16; 8 for TFLite int8).
        per_axis: one range per slice along `axis` (weights only: kopt
            quantizes activations and outputs per tensor).
        symmetric: a range centred on zero instead of `[min(x, 0), max(x, 0)]`.
        narrow_range: use `[1, 2^bits - 1]` instead of `[0, 2^bits - 1]`.
        axis: (kopt, keyword-only) the channel axis when `per_axis`.
        ema_decay: (kopt, keyword-only) decay of the moving average (tfmot: 0.999).

    Example:

    ```python
    quantizer = kopt.quantization.MovingAverageQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False)
    ```
    """

    def __init__(self, num_bits, per_axis, symmetric, narrow_range, *, axis=-1, ema_decay=0.999):
        super().__init__(num_bits, per_axis, symmetric, narrow_range, axis=axis)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be a number in [0, 1), e.g. 0.999, got {ema_decay!r}.")
        self.ema_decay = float(ema_decay)

    def update_range(self, x, weights):
        low, high = self.training_range(x)
        decay = self.ema_decay
        weights["min"].assign(ops.cast(weights["min"] * decay + low * (1.0 - decay), weights["min"].dtype))
        weights["max"].assign(ops.cast(weights["max"] * decay + high * (1.0 - decay), weights["max"].dtype))

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay}


@keras.saving.register_keras_serializable(package="kopt")
class AllValuesQuantizer(_RangeQuantizer):
    """Quantizes with the min/max of every value seen in training (tfmot's `AllValuesQuantizer`).

    The kept range starts at `[0, 0]` and only grows: each training batch widens
    it to include the batch range (see `batch_range`). Unlike tfmot, which
    ignores `per_axis` here, kopt honours it.

    Args:
        num_bits: bit width (2 to 16; 8 for TFLite int8).
        per_axis: one range per slice along `axis` (weights only).
        symmetric: a range centred on zero instead of `[min(x, 0), max(x, 0)]`.
        narrow_range: use `[1, 2^bits - 1]` instead of `[0, 2^bits - 1]`.
        axis: (kopt, keyword-only) the channel axis when `per_axis`.

    Example:

    ```python
    quantizer = kopt.quantization.AllValuesQuantizer(
        num_bits=8, per_axis=False, symmetric=False, narrow_range=False)
    ```
    """

    init_min, init_max = 0.0, 0.0  # tfmot's initial range

    def update_range(self, x, weights):
        low, high = self.training_range(x)
        weights["min"].assign(ops.cast(ops.minimum(weights["min"], low), weights["min"].dtype))
        weights["max"].assign(ops.cast(ops.maximum(weights["max"], high), weights["max"].dtype))


@keras.saving.register_keras_serializable(package="kopt")
class WeightQuantizer(LastValueQuantizer):
    """kopt's weight quantizer: a symmetric, narrow-range `LastValueQuantizer` (TFLite's int8 weight spec).

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
        super().__init__(num_bits, per_axis, symmetric=True, narrow_range=True, axis=axis)

    def get_config(self):
        return {"num_bits": self.num_bits, "per_axis": self.per_axis, "axis": self.axis}


@keras.saving.register_keras_serializable(package="kopt")
class ActivationQuantizer(MovingAverageQuantizer):
    """kopt's activation quantizer: an asymmetric per-tensor `MovingAverageQuantizer` that calibrates fast.

    Differs from tfmot's setting (`MovingAverageQuantizer(8, False, False, False)`:
    decay 0.999 from `[-6, 6]`) in two ways, so short fine-tuning calibrates: the
    first training batch sets the range directly, and the default decay is 0.99.
    Both converge to the same range.

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
        super().__init__(num_bits, per_axis=False, symmetric=False, narrow_range=False, ema_decay=ema_decay)
        self.init_min = float(init_min)
        self.init_max = float(init_max)

    def build(self, layer, shape, name):
        weights = super().build(layer, shape, name)
        weights["seen"] = layer.add_weight(
            name=f"{name}_seen", shape=(), initializer="zeros", trainable=False, aggregation="none",
            dtype="float32", autocast=False)
        return weights

    def update_range(self, x, weights):
        low, high = self.training_range(x)
        seen = ops.convert_to_tensor(weights["seen"]) > 0
        decay = self.ema_decay
        for key, batch in (("min", low), ("max", high)):
            value = ops.where(seen, weights[key] * decay + batch * (1.0 - decay), batch)
            weights[key].assign(ops.cast(value, weights[key].dtype))
        weights["seen"].assign(1.0)

    def get_config(self):
        return {"num_bits": self.num_bits, "ema_decay": self.ema_decay,
                "init_min": self.init_min, "init_max": self.init_max}


@keras.saving.register_keras_serializable(package="kopt")
class FixedQuantizer(Quantizer):
    """Quantizes with a fixed range that training never changes (tfmot's `FixedQuantizer`).

    Used by `fix_input_output_range`. The range is kept in `<name>_min` /
    `<name>_max` weights (with `<name>_seen` = 1, since the range is set from
    the start), so converters and `kopt.convert` read it like a trained range.

    Args:
        num_bits: bit width (2 to 16).
        init_min: the lower end of the range.
        init_max: the upper end of the range.
        narrow_range: use `[1, 2^bits - 1]` instead of `[0, 2^bits - 1]`.

    Example:

    ```python
    quantizer = kopt.quantization.FixedQuantizer(num_bits=8, init_min=0.0, init_max=1.0, narrow_range=False)
    ```
    """

    def __init__(self, num_bits, init_min, init_max, narrow_range):
        if isinstance(num_bits, bool) or not isinstance(num_bits, numbers.Integral) or not 2 <= num_bits <= 16:
            raise ValueError(f"`num_bits` must be an integer from 2 to 16 (FakeQuant's bit widths), got {num_bits!r}.")
        if not float(init_min) <= 0.0 <= float(init_max) or float(init_min) == float(init_max):
            raise ValueError(
                f"The fixed range [{init_min!r}, {init_max!r}] must contain 0 and not be empty (an int8 grid has "
                "zero on it), e.g. init_min=0.0, init_max=1.0.")
        self.num_bits = int(num_bits)
        self.init_min = float(init_min)
        self.init_max = float(init_max)
        self.narrow_range = bool(narrow_range)

    def build(self, layer, shape, name):
        def var(suffix, value):
            return layer.add_weight(
                name=f"{name}_{suffix}", shape=(), initializer=keras.initializers.Constant(value),
                trainable=False, aggregation="none", dtype="float32", autocast=False)

        return {"min": var("min", self.init_min), "max": var("max", self.init_max), "seen": var("seen", 1.0)}

    def __call__(self, inputs, training, weights):
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        x = inputs if dtype == "float32" else ops.cast(inputs, "float32")
        y = keras.quantizers.fake_quant_with_min_max_vars(
            x, self.init_min, self.init_max, num_bits=self.num_bits, narrow_range=self.narrow_range)
        return y if dtype == "float32" else ops.cast(y, dtype)

    def get_config(self):
        return {"num_bits": self.num_bits, "init_min": self.init_min, "init_max": self.init_max,
                "narrow_range": self.narrow_range}


@keras.saving.register_keras_serializable(package="kopt")
class NoQuantizer(Quantizer):
    """Leaves the tensor as it is (tfmot's `NoQuantizer`; used by `remove_input_range`).

    Example:

    ```python
    x = np.linspace(-1, 1, 5).astype("float32")
    assert np.array_equal(kopt.quantization.NoQuantizer()(x, False, {}), x)
    ```
    """

    def __call__(self, inputs, training, weights):
        return inputs
