"""QAT ranges for the tensors inside a layer (LayerNormalization's mean, variance ...): int8 without data."""

import keras
import numpy as np
import pytest

from kopt import convert, quantization
from kopt.quantization.wrapper import QuantizeWrapper
from tests.litert_truth import np_sqnr, only_output

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np_fake_quant(x, low, high, bits=8):
    """TensorFlow's FakeQuantWithMinMaxVars (asymmetric, the range nudged so that zero is on the grid)."""
    steps = 2 ** bits - 1
    scale = (high - low) / steps
    zero_point = np.clip(np.round(-low / scale), 0, steps)
    low, high = -zero_point * scale, (steps - zero_point) * scale
    return np.round((np.clip(x, low, high) - low) / scale) * scale + low


def _convnext_like():
    """Conv -> LayerNormalization -> Dense(gelu) -> pooling -> LayerNormalization -> logits (ConvNeXt's pattern)."""
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same")(inputs)
    x = L.LayerNormalization(epsilon=1e-6)(x)
    x = L.Dense(32, activation="gelu")(x)
    x = L.GlobalAveragePooling2D()(L.Add()([x, L.Dense(32)(x)]))
    x = L.LayerNormalization()(x)
    return keras.Model(inputs, L.Dense(10)(x))


@pytest.fixture(scope="module")
def trained():
    from kopt.datasets import load_digits

    (x, y), (x_test, _) = load_digits()
    keras.utils.set_random_seed(0)
    qat = quantization.quantize_model(_convnext_like())
    qat.compile("adam", LOSS)
    qat.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return qat, x_test


def _norms(qat):
    return [layer for layer in qat.layers
            if isinstance(layer, QuantizeWrapper) and isinstance(layer.layer, quantization.IntegerLayerNormalization)]


def test_a_qat_model_with_layer_normalization_converts_to_full_int8_without_data(trained, tmp_path):
    qat, x_test = trained
    assert len(_norms(qat)) == 2
    for wrapper in _norms(qat):
        assert isinstance(wrapper.quantize_config, quantization.InternalRangesQuantizeConfig)
    path = tmp_path / "ln.tflite"
    convert.to_tflite(qat, path, validation_data=x_test)  # raises if an op stays float or the file disagrees
    reference = keras.ops.convert_to_numpy(qat(x_test, training=False))
    got = only_output(path.read_bytes(), x_test).reshape(reference.shape)
    assert np_sqnr(reference, got) > 30.0


def test_without_the_internal_ranges_the_converter_needs_data(trained, monkeypatch):
    """The check that matters: the same model whose LayerNormalizations declare no internal tensors is refused."""
    _, x_test = trained
    monkeypatch.setattr(quantization.IntegerLayerNormalization, "quantized_internals", property(lambda self: ()))
    bare = quantization.quantize_model(_convnext_like())
    bare.compile("adam", LOSS)
    bare.fit(x_test, np.zeros(len(x_test), "int32"), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"layer_normalization.*representative_data"):
        convert.to_tflite(bare)


def test_the_layer_normalization_wrapper_computes_the_numpy_formula_with_its_ranges(trained):
    qat, x_test = trained
    wrapper = _norms(qat)[-1]  # the one after pooling: (batch, 32)
    inputs = np.random.default_rng(0).normal(1.0, 2.0, (16, 32)).astype("float32")
    states = {name: state for name, _, state in wrapper._internal_quantizers}

    def fq(name, value):
        state = states[name]
        return _np_fake_quant(value, float(state["min"].numpy()), float(state["max"].numpy()))

    layer = wrapper.layer
    gamma, beta = (keras.ops.convert_to_numpy(w) for w in (layer.gamma, layer.beta))
    mean = fq("mean", inputs.mean(-1, keepdims=True))
    centered = fq("centered", inputs - mean)
    variance = fq("variance", fq("squared", centered * centered).mean(-1, keepdims=True))
    inverse_std = fq("inverse_std", 1 / np.sqrt(fq("variance_epsilon", variance + layer.epsilon)))
    scaled = fq("scaled", fq("normalized", centered * inverse_std) * gamma)
    (output_state,) = wrapper._output_states[0]
    expected = _np_fake_quant(scaled + beta, float(output_state["min"].numpy()), float(output_state["max"].numpy()))

    got = keras.ops.convert_to_numpy(wrapper(inputs, training=False))
    step = (float(output_state["max"].numpy()) - float(output_state["min"].numpy())) / 255
    assert np.mean(np.abs(got - expected) <= 1e-4) > 0.99  # float rounding may move a value across a grid edge
    assert np.max(np.abs(got - expected)) <= step + 1e-4


def test_training_records_ranges_and_keeps_gradients_finite():
    norm = quantization.IntegerLayerNormalization()
    norm.build((None, 8))
    wrapper = QuantizeWrapper(norm, quantization.InternalRangesQuantizeConfig())
    wrapper.build((None, 8))
    # A constant row: its variance is zero, and in inference its inverse square root saturates the range.
    x = np.concatenate([np.full((1, 8), 3.0), np.random.default_rng(0).normal(size=(7, 8))]).astype("float32")
    import tensorflow as tf

    variable = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = wrapper(variable, training=True)
        loss = tf.reduce_sum(y * tf.range(8, dtype=y.dtype))
    gradient = tape.gradient(loss, variable).numpy()
    assert np.all(np.isfinite(gradient))
    # In training the layer computes in float (the output alone is fake-quantized) ...
    reference = keras.ops.convert_to_numpy(L.LayerNormalization()(x))
    assert np.max(np.abs(keras.ops.convert_to_numpy(y) - reference)) < 0.05
    # ... and its internal ranges are the batch's (the first batch sets them).
    states = {name: state for name, _, state in wrapper._internal_quantizers}
    variance = ((x - x.mean(-1, keepdims=True)) ** 2).mean(-1)
    np.testing.assert_allclose(float(states["variance"]["max"].numpy()), variance.max(), rtol=1e-5)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(wrapper(x, training=False))))


def test_internal_ranges_are_saved_with_the_model(trained, tmp_path):
    qat, x_test = trained
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x_test[:32], verbose=0), qat.predict(x_test[:32], verbose=0))
    names = {weight.path.split("/")[-1] for weight in loaded.weights}
    assert {"internal_inverse_std_min", "internal_inverse_std_max"} <= names
