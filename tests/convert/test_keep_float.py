"""`to_tflite(keep_float=..., int16_activations=...)`: chosen layers stay float (TFLite's selective quantization)
or run with int16 activations (AI Edge Quantizer) in an int8 file.

The truth is LiteRT's interpreter: the dtypes of each op's tensors in the file, and the file's outputs.
"""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from litert_truth import file_sqnr
from outlier_models import digits_mlp_cnn, plant_activation_outlier, plant_weight_outlier

from kopt import convert, quantization
from kopt.errors import ConversionError


def _op_dtypes(content):
    """[(op name, output dtype name)] of the file, read with LiteRT."""
    it = Interpreter(model_content=bytes(content))
    details = it.get_tensor_details()
    return [(op["op_name"], np.dtype(details[op["outputs"][0]]["dtype"]).name) for op in it._get_ops_details()]


def _outlier_model():
    """An untrained `digits_mlp_cnn` with `plant_weight_outlier`: per-tensor int8 of 'logits' rounds its weights to
    a few levels, the other layers quantize well."""
    return plant_weight_outlier(digits_mlp_cnn(seed=1), value=50.0)


@pytest.fixture(scope="module")
def outlier(digits_data):
    (x_train, _), (x_test, _) = digits_data
    return _outlier_model(), x_train[:200], x_test[:200]


def test_kept_layer_is_float_in_the_file_and_the_rest_int8(outlier):
    model, x, held = outlier
    int8 = convert.to_tflite(model, representative_data=x, validation_data=held, on_mismatch="warn")
    mixed = convert.to_tflite(model, representative_data=x, validation_data=held, keep_float=["logits"],
                              on_mismatch="warn")
    ops = _op_dtypes(mixed)
    computing = [(op, dtype) for op, dtype in ops if op in ("CONV_2D", "FULLY_CONNECTED")]
    assert computing == [("CONV_2D", "int8"), ("FULLY_CONNECTED", "int8"), ("FULLY_CONNECTED", "float32")]
    assert ("DEQUANTIZE", "float32") in ops and ops[-1] == ("QUANTIZE", "int8")  # int8 output, as asked
    assert all(dtype == "int8" for op, dtype in _op_dtypes(int8) if op in ("CONV_2D", "FULLY_CONNECTED"))
    # the files, run in LiteRT here: the mixed one is much closer to the model than the all-int8 one
    assert file_sqnr(model, mixed, held) > file_sqnr(model, int8, held) + 10
    report = mixed.mixed_precision
    assert report.kept_float == ["logits"]
    assert [(op["op"], op["dtype"], op["layers"]) for op in report.ops] == [("FULLY_CONNECTED", "float32",
                                                                              ["logits"])]
    assert report.size_bytes == len(mixed) and report.int8_size_bytes < report.size_bytes
    assert report.latency_ms > 0 and report.int8_latency_ms > 0
    assert "logits" in str(report) and report.to_dict()["size_cost"] > 1


def test_float_io_regex_and_inner_layers(outlier):
    model, x, held = outlier
    inner = keras.Sequential([keras.Input((10,)), keras.layers.Dense(10, name="inner_dense")], name="block")
    wrapped = keras.Model(model.inputs, inner(model.outputs[0]))
    mixed = convert.to_tflite(wrapped, representative_data=x, validation_data=held, keep_float=["lo.*", "inner_dense"],
                              input_type="float32", output_type="float32", on_mismatch="warn")
    it = Interpreter(model_content=bytes(mixed))
    assert it.get_input_details()[0]["dtype"] == np.float32 and it.get_output_details()[0]["dtype"] == np.float32
    assert mixed.mixed_precision.kept_float == ["logits", "inner_dense"]
    float_layers = [op["layers"] for op in mixed.mixed_precision.ops if op["op"] == "FULLY_CONNECTED"]
    assert float_layers == [["logits"], ["block", "inner_dense"]]  # the nested model, and its layer
    # the tensor names carry the layer names again (not the codes used to map them)
    names = [t["name"] for t in it.get_tensor_details()]
    assert not any("kopts" in n for n in names) and any("hidden" in n for n in names)


def test_bad_arguments(outlier, tmp_path):
    model, x, _ = outlier
    path = tmp_path / "m.tflite"
    cases = [
        (dict(keep_float=["nope"]), "`keep_float`: 'nope' matches no layer"),
        (dict(keep_float="(unclosed"), "neither a layer name nor a valid regular expression"),
        (dict(keep_float=["logits"], quantization="int16x8"), "needs quantization='int8'"),
        (dict(keep_float=["logits"], input_type="int8", output_type="float32"), "must be the same"),
        (dict(keep_float=[3]), "list of layer names"),
        (dict(int16_activations=["logits"], quantization="int16x8"), "needs quantization='int8'"),
        (dict(int16_activations=["logits"], input_type="float32", output_type="float32"),
         "inputs and outputs are int8"),
        (dict(int16_activations=["logits"], keep_float=["logits"]), "both select"),
        (dict(int16_activations=["nope"]), "`int16_activations`: 'nope' matches no layer"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            convert.to_tflite(model, path, representative_data=x, **kwargs)
        assert not path.exists()


def test_qat_model_keeps_only_layers_qat_left_float(digits_data):
    (x_train, y_train), (x_test, _) = digits_data
    model = _outlier_model()
    qat = quantization.quantize_model(model)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x_train[:64], y_train[:64], epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"float_layers=\['logits'\]"):
        convert.to_tflite(qat, keep_float=["logits"])
    partial = quantization.quantize_model(model, float_layers=["logits"])
    partial.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    partial.fit(x_train[:64], y_train[:64], epochs=1, verbose=0)
    with pytest.raises(ConversionError):  # float ops nobody asked for
        convert.to_tflite(partial, validation_data=x_test[:100], on_mismatch="warn")
    mixed = convert.to_tflite(partial, validation_data=x_test[:100], keep_float=["logits"], on_mismatch="warn")
    assert [op["layers"] for op in mixed.mixed_precision.ops if op["op"] == "FULLY_CONNECTED"] == [["logits"]]
    assert mixed.mixed_precision.int8_size_bytes is None


def test_int16_activations_for_one_layer(digits_data):
    (x_train, _), (x_test, _) = digits_data
    model = plant_activation_outlier(digits_mlp_cnn(seed=2))  # int16 for 'hidden' and 'logits' (reads it)
    held = x_test[:200]
    int8 = convert.to_tflite(model, representative_data=x_train[:200], validation_data=held, on_mismatch="warn")
    wide = convert.to_tflite(model, representative_data=x_train[:200], validation_data=held,
                             int16_activations=["hidden", "logits"], on_mismatch="warn")
    computing = [(op, dtype) for op, dtype in _op_dtypes(wide) if op in ("CONV_2D", "FULLY_CONNECTED")]
    assert computing == [("CONV_2D", "int8"), ("FULLY_CONNECTED", "int16"), ("FULLY_CONNECTED", "int16")]
    assert ("QUANTIZE", "int16") in _op_dtypes(wide)  # int8 -> int16 requantization before 'hidden'
    assert file_sqnr(model, wide, held) > file_sqnr(model, int8, held) + 10
    report = wide.mixed_precision
    assert report.int16 == ["hidden", "logits"] and report.kept_float == []
    assert [op["layers"] for op in report.ops if op["dtype"] == "int16"] == [["hidden"], ["logits"]]
    assert "2 with int16 activations" in str(report)
