"""fix_input_output_range / remove_input_range: tfmot's semantics, the fixed ranges reach the int8 file."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from kopt import convert, quantization


def _sequential():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])


def _functional():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))


def _data(n=64):
    rng = np.random.default_rng(0)
    x = (rng.random((n, 6)) * 3).astype("float32")  # inputs in [0, 3]: a learned input range would cover them
    return x, (x[:, :2] * 5).astype("float32")  # outputs in [0, 15]


def _fit(model):
    x, y = _data()
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    return model


def _file_io(model):
    """((input scale, zero point), (output scale, zero point)) of the model's int8 file, read with LiteRT."""
    details = Interpreter(model_content=bytes(convert.to_tflite(model, validate=False)))
    details.allocate_tensors()
    return details.get_input_details()[0]["quantization"], details.get_output_details()[0]["quantization"]


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_the_fixed_ranges_stay_through_training_and_reach_the_file(build):
    qat = quantization.quantize_model(build())
    fixed = quantization.fix_input_output_range(qat, input_min=0.0, input_max=1.0, output_min=-4.0, output_max=4.0)
    first = next(layer for layer in fixed.layers if isinstance(layer, quantization.QuantizeLayer))
    assert isinstance(first.quantizer, quantization.FixedQuantizer)
    _fit(fixed)
    (in_scale, in_zero), (out_scale, _) = _file_io(fixed)
    assert in_scale == pytest.approx(1 / 255) and in_zero == -128
    assert out_scale == pytest.approx(8 / 255)
    # The fault the check catches: without the fix, training learns the ranges ([0, 3] inputs, wider outputs).
    (in_scale, _), (out_scale, _) = _file_io(_fit(quantization.quantize_model(build())))
    assert in_scale > 2 / 255 and out_scale != pytest.approx(8 / 255, rel=0.1)


def test_the_trained_weights_and_the_other_ranges_are_kept(tmp_path):
    qat = _fit(quantization.quantize_model(_sequential()))
    fixed = quantization.fix_input_output_range(qat, output_min=-16.0, output_max=16.0)
    for old, new in zip(qat.layers[1:], fixed.layers[1:]):
        for name in ("kernel", "bias"):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(getattr(new.layer, name)),
                                          keras.ops.convert_to_numpy(getattr(old.layer, name)))
    hidden = {w.name: keras.ops.convert_to_numpy(w) for w in qat.layers[1].weights}
    assert all(np.array_equal(keras.ops.convert_to_numpy(w), hidden[w.name]) for w in fixed.layers[1].weights)
    head = {w.name: float(keras.ops.convert_to_numpy(w))
            for w in fixed.layers[2].weights if w.name.startswith("activation")}
    assert head == {"activation_min": -16.0, "activation_max": 16.0, "activation_seen": 1.0}
    fixed.save(tmp_path / "fixed.keras")
    loaded = keras.saving.load_model(tmp_path / "fixed.keras")
    x, _ = _data()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), fixed.predict(x, verbose=0))


def test_remove_input_range_leaves_the_input_as_it_is():
    qat = quantization.quantize_model(_sequential())
    removed = quantization.remove_input_range(qat)
    assert isinstance(removed.layers[0].quantizer, quantization.NoQuantizer)
    x = np.linspace(-100, 100, 12, dtype="float32").reshape(2, 6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(removed.layers[0](x, training=True)), x)
    assert not np.array_equal(keras.ops.convert_to_numpy(qat.layers[0](x, training=False)), x)  # [-6, 6] before


def test_a_model_that_is_not_quantized_is_refused():
    with pytest.raises(ValueError, match="already quantized"):
        quantization.fix_input_output_range(_sequential())
    with pytest.raises(ValueError, match="already quantized"):
        quantization.remove_input_range(_functional())
    with pytest.raises(ValueError, match="contain 0"):
        quantization.fix_input_output_range(quantization.quantize_model(_sequential()), input_min=1.0, input_max=2.0)
