"""tfmot's quantizers (LastValue, MovingAverage, AllValues) and Default8BitQuantizeConfig, checked against NumPy."""

import keras
import numpy as np
import pytest
from keras import ops

from kopt import quantization
from kopt.quantization import (
    ActivationQuantizer,
    AllValuesQuantizer,
    Default8BitQuantizeConfig,
    LastValueQuantizer,
    MovingAverageQuantizer,
    WeightQuantizer,
)


# -- NumPy references (tfmot's quant_ops and TensorFlow's FakeQuant kernel) -----------------------

def np_batch_range(x, per_axis=False, symmetric=False, narrow_range=False, num_bits=8, axis=-1):
    if per_axis:
        axes = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
        low, high = x.min(axis=axes), x.max(axis=axes)
    else:
        low, high = x.min(), x.max()
    if symmetric:
        ratio = -1.0 if narrow_range else -((1 << num_bits) - 2) / (1 << num_bits)
        return np.minimum(low, high / ratio), np.maximum(high, low * ratio)
    return np.minimum(low, 0.0), np.maximum(high, 0.0)


def np_fake_quant(x, low, high, num_bits=8, narrow_range=False, axis=None):
    """TensorFlow's FakeQuantWithMinMaxVars(PerChannel): nudge the range so zero is exact, then round."""
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        low, high = low.reshape(shape), high.reshape(shape)
    quant_min, quant_max = (1 if narrow_range else 0), (1 << num_bits) - 1
    scale = (high - low) / (quant_max - quant_min)
    zero_point = np.clip(np.round(quant_min - low / scale), quant_min, quant_max)
    nudged_min, nudged_max = (quant_min - zero_point) * scale, (quant_max - zero_point) * scale
    clamped = np.clip(x, nudged_min, nudged_max)
    return np.floor((clamped - nudged_min) / scale + 0.5) * scale + nudged_min


def _state(quantizer, shape=(), name="x"):
    owner = keras.layers.Layer(name="owner")
    return quantizer.build(owner, shape, name)


def _np(weights):
    return {k: ops.convert_to_numpy(v) for k, v in weights.items()}


RNG = np.random.default_rng(0)
BATCHES = [(RNG.normal(size=(16, 6)) * s + m).astype("float32") for s, m in ((1.0, 0.5), (2.0, -1.0), (0.5, 3.0))]


# -- LastValueQuantizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric, narrow_range, num_bits", [
    (True, True, 8), (True, False, 8), (False, False, 8), (False, True, 8), (True, False, 4)])
def test_last_value_takes_the_last_batch_range(symmetric, narrow_range, num_bits):
    quantizer = LastValueQuantizer(num_bits, False, symmetric, narrow_range)
    state = _state(quantizer)
    np.testing.assert_array_equal(_np(state)["min"], -6.0)  # tfmot's initial range
    for x in BATCHES:
        y = ops.convert_to_numpy(quantizer(x, True, state))
    low, high = np_batch_range(BATCHES[-1], False, symmetric, narrow_range, num_bits)
    np.testing.assert_allclose(_np(state)["min"], low, rtol=1e-6)
    np.testing.assert_allclose(_np(state)["max"], high, rtol=1e-6)
    np.testing.assert_allclose(y, np_fake_quant(BATCHES[-1], low, high, num_bits, narrow_range), atol=1e-5)
    # Inference uses the kept range and leaves it alone.
    y = ops.convert_to_numpy(quantizer(BATCHES[0] * 10, False, state))
    np.testing.assert_allclose(_np(state)["max"], high, rtol=1e-6)
    np.testing.assert_allclose(y, np_fake_quant(BATCHES[0] * 10, low, high, num_bits, narrow_range), atol=1e-5)


def test_symmetric_ranges_are_centred_on_zero():
    x = BATCHES[2]  # all positive
    narrow = np_batch_range(x, symmetric=True, narrow_range=True)
    assert narrow[0] == -narrow[1] == -x.max()
    wide = np_batch_range(x, symmetric=True, narrow_range=False)
    assert wide[0] == pytest.approx(-x.max() * 256 / 254)  # zero lands exactly on -128..127's zero point
    quantizer = LastValueQuantizer(8, False, True, False)
    state = _state(quantizer)
    quantizer(x, True, state)
    np.testing.assert_allclose([_np(state)["min"], _np(state)["max"]], wide, rtol=1e-6)


@pytest.mark.parametrize("axis", [-1, -2])
def test_last_value_per_axis(axis):
    kernel = RNG.normal(size=(3, 3, 4, 5)).astype("float32") * np.arange(1, 6, dtype="float32")
    quantizer = LastValueQuantizer(8, True, True, True, axis=axis)
    state = _state(quantizer, kernel.shape, "kernel")
    assert state["max"].shape == (kernel.shape[axis],)
    y = ops.convert_to_numpy(quantizer(kernel, True, state))
    low, high = np_batch_range(kernel, True, True, True, axis=axis)
    np.testing.assert_allclose(_np(state)["max"], high, rtol=1e-6)
    np.testing.assert_allclose(_np(state)["max"], np.abs(kernel).max(axis=tuple(i for i in range(4) if i != axis % 4)))
    np.testing.assert_allclose(y, np_fake_quant(kernel, low, high, 8, True, axis=axis % 4), atol=1e-5)


def test_tfmot_per_axis_default_is_the_last_axis():
    kernel = RNG.normal(size=(6, 3)).astype("float32")
    quantizer = LastValueQuantizer(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)
    state = _state(quantizer, kernel.shape, "kernel")
    quantizer(kernel, True, state)
    np.testing.assert_allclose(_np(state)["max"], np.abs(kernel).max(axis=0))


# -- MovingAverageQuantizer ---------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric", [False, True])
def test_moving_average_is_tfmots_ema(symmetric):
    quantizer = MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=symmetric, narrow_range=False)
    assert quantizer.ema_decay == 0.999  # tfmot's MovingAvgQuantize(ema_decay=0.999)
    state = _state(quantizer)
    low, high = -6.0, 6.0  # from tfmot's initial range, without zero-debiasing
    for x in BATCHES:
        y = ops.convert_to_numpy(quantizer(x, True, state))
        batch_low, batch_high = np_batch_range(x, symmetric=symmetric)
        low, high = low * 0.999 + batch_low * 0.001, high * 0.999 + batch_high * 0.001
        np.testing.assert_allclose(_np(state)["min"], low, rtol=1e-5)
        np.testing.assert_allclose(_np(state)["max"], high, rtol=1e-5)
        np.testing.assert_allclose(y, np_fake_quant(x, low, high), atol=1e-5)
    quantizer(BATCHES[0], False, state)
    np.testing.assert_allclose(_np(state)["max"], high, rtol=1e-5)


def test_moving_average_per_axis_on_a_weight():
    kernel = RNG.normal(size=(8, 3)).astype("float32")
    quantizer = MovingAverageQuantizer(8, True, True, True, ema_decay=0.5)
    state = _state(quantizer, kernel.shape, "kernel")
    quantizer(kernel, True, state)
    np.testing.assert_allclose(_np(state)["max"], 0.5 * 6.0 + 0.5 * np.abs(kernel).max(axis=0), rtol=1e-6)


def test_activation_quantizer_is_a_fast_calibrating_moving_average():
    quantizer = ActivationQuantizer()
    assert isinstance(quantizer, MovingAverageQuantizer)
    assert (quantizer.num_bits, quantizer.per_axis, quantizer.symmetric, quantizer.narrow_range) == (8, False, False, False)
    state = _state(quantizer)
    quantizer(BATCHES[0], True, state)  # the first batch sets the range
    low, high = np_batch_range(BATCHES[0])
    np.testing.assert_allclose([_np(state)["min"], _np(state)["max"]], [low, high], rtol=1e-6)
    quantizer(BATCHES[1], True, state)
    b_low, b_high = np_batch_range(BATCHES[1])
    np.testing.assert_allclose(_np(state)["min"], 0.99 * low + 0.01 * b_low, rtol=1e-5)
    np.testing.assert_allclose(_np(state)["max"], 0.99 * high + 0.01 * b_high, rtol=1e-5)


# -- AllValuesQuantizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("symmetric, narrow_range", [(False, False), (True, True)])
def test_all_values_keeps_the_running_min_max(symmetric, narrow_range):
    quantizer = AllValuesQuantizer(num_bits=8, per_axis=False, symmetric=symmetric, narrow_range=narrow_range)
    state = _state(quantizer)
    np.testing.assert_array_equal([_np(state)["min"], _np(state)["max"]], [0.0, 0.0])  # tfmot's initial range
    low, high = 0.0, 0.0
    for x in BATCHES:
        y = ops.convert_to_numpy(quantizer(x, True, state))
        batch_low, batch_high = np_batch_range(x, symmetric=symmetric, narrow_range=narrow_range)
        low, high = min(low, batch_low), max(high, batch_high)
        np.testing.assert_allclose([_np(state)["min"], _np(state)["max"]], [low, high], rtol=1e-6)
        np.testing.assert_allclose(y, np_fake_quant(x, low, high, 8, narrow_range), atol=1e-5)
    quantizer(BATCHES[0] * 100, False, state)
    np.testing.assert_allclose(_np(state)["max"], high, rtol=1e-6)


# -- shared behaviour ---------------------------------------------------------------------------------

def test_weight_quantizer_is_last_value_symmetric_narrow():
    kernel = RNG.normal(size=(3, 3, 2, 4)).astype("float32")
    kopt_q, tfmot_q = WeightQuantizer(per_axis=True), LastValueQuantizer(8, True, True, True)
    assert isinstance(kopt_q, LastValueQuantizer)
    outputs = []
    for quantizer in (kopt_q, tfmot_q):
        state = _state(quantizer, kernel.shape, "kernel")
        outputs.append(ops.convert_to_numpy(quantizer(kernel, True, state)))
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("scale", [0.01, 0.3, 10.0])  # the widest channel narrower and wider than 1
def test_an_all_zero_channel_gets_the_widest_range(scale):
    kernel = (scale * RNG.normal(size=(4, 3))).astype("float32")
    kernel[:, 1] = 0.0  # e.g. pruned away: its own range would be zero
    quantizer = LastValueQuantizer(8, True, True, True)
    state = _state(quantizer, kernel.shape, "kernel")
    y = ops.convert_to_numpy(quantizer(kernel, True, state))
    widest = np.abs(kernel).max()
    assert _np(state)["max"][1] == pytest.approx(widest, rel=1e-5)
    np.testing.assert_array_equal(y[:, 1], 0.0)


@pytest.mark.parametrize("cls", [LastValueQuantizer, MovingAverageQuantizer, AllValuesQuantizer])
def test_config_round_trip_and_tfmot_signature(cls):
    quantizer = cls(4, True, True, False)  # tfmot's positional order: num_bits, per_axis, symmetric, narrow_range
    assert (quantizer.num_bits, quantizer.per_axis, quantizer.symmetric, quantizer.narrow_range) == (4, True, True, False)
    assert cls.from_config(quantizer.get_config()) == quantizer
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(quantizer))
    assert type(restored) is cls and restored == quantizer
    assert quantizer != cls(8, True, True, False)
    with pytest.raises(TypeError):
        cls()  # as in tfmot, the four settings are required


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="num_bits"):
        LastValueQuantizer(1, False, True, True)
    with pytest.raises(ValueError, match="ema_decay"):
        MovingAverageQuantizer(8, False, False, False, ema_decay=1.0)
    with pytest.raises(ValueError, match="per_axis=False"):
        _state(MovingAverageQuantizer(8, True, False, False), (), "activation")  # activations are per tensor


def test_a_quantizer_written_for_tfmot_builds_in_its_own_argument_order():
    class FixedRangeQuantizer(quantization.quantizers.Quantizer):
        """tfmot's Quantizer docstring example (keras.backend.clip is keras.ops.clip in Keras 3)."""

        def build(self, tensor_shape, name, layer):
            range_var = layer.add_weight(
                name=name + "_range", shape=(), initializer=keras.initializers.Constant(6.0), trainable=False)
            return {"range_var": range_var}

        def __call__(self, inputs, training, weights, **kwargs):
            return keras.ops.clip(inputs, 0.0, weights["range_var"])

        def get_config(self):
            return {}

    quantizer = FixedRangeQuantizer()
    for args in (lambda owner: (owner, (3,), "kopt_order"), lambda owner: ((3,), "tfmot_order", owner)):
        owner = keras.layers.Layer()
        weights = quantizer.build(*args(owner))
        assert weights["range_var"].path.endswith("_order_range")
    y = quantizer(np.array([-1.0, 3.0, 9.0], "float32"), False, weights)
    np.testing.assert_array_equal(ops.convert_to_numpy(y), [0.0, 3.0, 6.0])


# -- Default8BitQuantizeConfig ------------------------------------------------------------------------

def test_default_8bit_config_has_tfmots_positional_meaning():
    config = Default8BitQuantizeConfig(["kernel"], ["activation"], False)
    conv = keras.layers.Conv2D(4, 3, activation="relu")
    conv.build((None, 8, 8, 2))
    [(variable, weight_q)] = config.get_weights_and_quantizers(conv)
    assert variable is conv.kernel
    assert weight_q == LastValueQuantizer(num_bits=8, per_axis=False, symmetric=True, narrow_range=True)
    [(activation, activation_q)] = config.get_activations_and_quantizers(conv)
    assert activation is conv.activation
    assert isinstance(activation_q, MovingAverageQuantizer)
    assert (activation_q.num_bits, activation_q.per_axis, activation_q.symmetric, activation_q.narrow_range) == (
        8, False, False, False)
    assert config.get_output_quantizers(conv) == []
    assert len(Default8BitQuantizeConfig([], [], True).get_output_quantizers(conv)) == 1
    with pytest.raises(TypeError):
        Default8BitQuantizeConfig(["kernel"], ["activation"], False, True)  # kopt's options are keyword-only


def test_default_8bit_config_weights_are_per_tensor_unless_asked():
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, activation="relu")])

    def ranges(config):
        annotated = keras.Sequential([keras.Input((8, 8, 2)), quantization.quantize_annotate_layer(
            keras.layers.Conv2D.from_config(model.layers[0].get_config()), config)])
        annotated.layers[0].layer.set_weights(model.layers[0].get_weights())
        wrapper = quantization.quantize_apply(annotated).layers[-1]
        return ops.convert_to_numpy(wrapper._weight_states[0]["max"])

    kernel = ops.convert_to_numpy(model.layers[0].kernel)
    np.testing.assert_allclose(ranges(Default8BitQuantizeConfig(["kernel"], ["activation"], False)), np.abs(kernel).max())
    np.testing.assert_allclose(
        ranges(Default8BitQuantizeConfig(["kernel"], ["activation"], False, per_axis=True)),
        np.abs(kernel).max(axis=(0, 1, 2)))


def test_default_8bit_config_saves_and_loads(tmp_path):
    config = Default8BitQuantizeConfig(["kernel"], ["activation"], False)
    assert Default8BitQuantizeConfig.from_config(config.get_config()) == config
    model = keras.Sequential([
        keras.Input((6,)),
        quantization.quantize_annotate_layer(keras.layers.Dense(5, activation="relu"), config),
        keras.layers.Dense(2),
    ])
    qat = quantization.quantize_apply(model)
    x = RNG.normal(size=(32, 6)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, RNG.normal(size=(32, 2)).astype("float32"), epochs=1, verbose=0)
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert loaded.layers[1].quantize_config == config
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))


def test_default_8bit_config_reads_configs_saved_by_earlier_kopt():
    old = {"weight_attrs": ["kernel"], "per_axis": True, "axis": -2, "quantize_activation": True,
           "quantize_output": False}
    assert Default8BitQuantizeConfig.from_config(old) == Default8BitQuantizeConfig(
        ["kernel"], ["activation"], False, per_axis=True, axis=-2)


def test_default_8bit_config_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="weight_attrs"):
        Default8BitQuantizeConfig("kernel", [], False)  # a string, not a list
    with pytest.raises(ValueError, match="activation_attrs"):
        Default8BitQuantizeConfig(["kernel"], ["recurrent_activation"], False)
    with pytest.raises(ValueError, match="no attribute 'depthwise_kernel'"):
        Default8BitQuantizeConfig(["depthwise_kernel"], [], False).get_weights_and_quantizers(keras.layers.Dense(2))
