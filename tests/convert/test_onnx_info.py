"""inspect on ONNX models (ONNXInfo), checked against the onnx package reading the file; TFLiteInfo.to_dict."""

import collections
import json

import keras
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from kopt import convert, quantization


@pytest.fixture(scope="module")
def files():
    """A float CNN with half of each kernel zero, and its QAT model, as ONNX bytes."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1), name="pixels"), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    rng = np.random.default_rng(0)
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    for kernel in kernels:
        value = kernel.numpy()
        value[rng.random(value.shape) < 0.5] = 0.0
        kernel.assign(value)
    zeros = sum(int(np.sum(k.numpy() == 0)) for k in kernels) / sum(int(np.prod(k.shape)) for k in kernels)
    qat = quantization.quantize_model(model)
    qat(rng.random((32, 8, 8, 1)).astype("float32"), training=True)  # sets the activation ranges
    return bytes(convert.to_onnx(model, validate=False)), bytes(convert.to_onnx(qat, validate=False)), zeros


def _dtype(elem_type):
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


def test_op_counts_inputs_and_outputs_are_the_files(files, tmp_path):
    float_file, qat_file, _ = files
    for content in (float_file, qat_file):
        proto = onnx.load_from_string(content)
        path = tmp_path / "m.onnx"
        path.write_bytes(content)
        for given in (content, path, str(path), convert.ONNXModel(content)):
            info = convert.inspect(given)
            assert isinstance(info, convert.ONNXInfo)
            assert info.op_counts == dict(collections.Counter(n.op_type for n in proto.graph.node))
            assert info.size_bytes == len(content) and 0 < info.gzip_bytes < len(content)
            assert info.opset == proto.opset_import[0].version
        initializers = {t.name for t in proto.graph.initializer}
        graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
        assert [(i["name"], i["dtype"]) for i in info.inputs] == [
            (i.name, _dtype(i.type.tensor_type.elem_type)) for i in graph_inputs]
        assert info.inputs[0]["name"] == "pixels" and info.inputs[0]["shape"] == (None, 8, 8, 1)
        assert [(o["name"], o["dtype"]) for o in info.outputs] == [
            (o.name, _dtype(o.type.tensor_type.elem_type)) for o in proto.graph.output]
        assert info.outputs[0]["shape"] == (None, 10)


def test_quantization_parameters_are_the_initializers(files):
    float_file, qat_file, _ = files
    proto = onnx.load_from_string(qat_file)
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    info = convert.inspect(qat_file)
    quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    activations = [t for t in info.tensors if not t["constant"]]
    assert len(activations) == len(quantize) == 3  # the input, the conv (ReLU) output, the dense output
    for node, tensor in zip(quantize, activations):
        assert tensor["name"] == node.output[0] and tensor["input"] == node.input[0]
        assert tensor["scales"] == [float(values[node.input[1]])]
        assert tensor["zero_points"] == [int(values[node.input[2]])]
        assert tensor["dtype"] == values[node.input[2]].dtype.name == "uint8"
    weights = [t for t in info.tensors if t["constant"]]
    stored = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in values]
    assert len(weights) == len(stored) == 2
    for node, tensor in zip(stored, weights):
        assert tensor["dtype"] == "uint8" and tensor["shape"] == values[node.input[0]].shape
        assert tensor["scales"] == [float(s) for s in np.atleast_1d(values[node.input[1]])]
    assert [t["axis"] for t in weights] == [0, None]  # conv per output channel, dense per tensor
    assert info.is_quantized and not convert.inspect(float_file).is_quantized


def test_zero_weight_fraction(files):
    float_file, qat_file, keras_zeros = files
    assert convert.inspect(float_file).zero_weight_fraction == pytest.approx(keras_zeros, abs=1e-9)
    # The QAT file stores uint8 weights: a weight is zero where q equals its zero point (128).
    proto = onnx.load_from_string(qat_file)
    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    stored = [values[n.input[0]] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in values]
    truth = sum(int(np.sum(q == 128)) for q in stored) / sum(q.size for q in stored)
    assert convert.inspect(qat_file).zero_weight_fraction == pytest.approx(truth, abs=1e-9)
    assert truth >= keras_zeros  # pruned zeros stay zero; small weights round to zero too


def test_json_and_summary(files):
    float_file, qat_file, _ = files
    info = convert.inspect(qat_file)
    data = json.loads(json.dumps(info.to_dict()))
    ops = [node.op_type for node in onnx.load_from_string(qat_file).graph.node]  # counted by onnx itself
    assert data["format"] == "onnx" and data["op_counts"] == {op: ops.count(op) for op in set(ops)}
    assert data["is_quantized"] is True
    assert data["inputs"][0] == {"name": "pixels", "dtype": "float32", "shape": [None, 8, 8, 1]}
    text = str(info)
    assert text.startswith("ONNX model: ") and "QuantizeLinear" in text and "QDQ: 3 quantized activations" in text
    assert "input pixels: float32 (None, 8, 8, 1)" in text
    assert "float (no QuantizeLinear" in str(convert.inspect(float_file))


def test_tflite_info_is_unchanged_and_has_a_json_form(files):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    tflite = bytes(convert.to_tflite(model, quantization=None, validate=False))
    info = convert.inspect(tflite)
    assert isinstance(info, convert.TFLiteInfo) and info.op_counts == {"FULLY_CONNECTED": 1}
    data = json.loads(json.dumps(info.to_dict()))
    assert data["format"] == "tflite" and data["op_counts"] == {"FULLY_CONNECTED": 1}
    assert data["is_full_integer"] is False and data["size_bytes"] == len(tflite)
    assert data["inputs"][0]["shape"] == [1, 8]  # the file's own input shape (LiteRT gives batch 1), as a JSON list


def test_detection_and_errors(files, tmp_path):
    float_file, _, _ = files
    (tmp_path / "model.bin").write_bytes(float_file)  # ONNX bytes under another suffix
    assert isinstance(convert.inspect(tmp_path / "model.bin"), convert.ONNXInfo)
    with pytest.raises(ValueError, match="No .onnx file"):
        convert.inspect(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 not a model")
    with pytest.raises(ValueError, match="ONNX"):
        convert.inspect(tmp_path / "bad.onnx")
