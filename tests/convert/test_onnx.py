"""to_onnx: checked with onnxruntime and the onnx package reading the files (never kopt against itself)."""

import collections
import os
import warnings

import keras
import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf
from onnx import numpy_helper

from kopt import convert, quantization
from kopt.convert import onnx as onnx_lib
from kopt.demo import build_cnn
from kopt.errors import ConversionError, ValidationError

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def ort_outputs(content, feeds):
    """Every output of the file in onnxruntime (CPU, default options), by name, on float32 `feeds`."""
    session = onnxruntime.InferenceSession(bytes(content), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def ort_only(content, x):
    session = onnxruntime.InferenceSession(bytes(content), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    return y


def np_sqnr(reference, got):
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - got) ** 2))


def nodes(content):
    return collections.Counter(n.op_type for n in onnx.load_from_string(bytes(content)).graph.node)


@pytest.fixture(scope="module")
def trained(digits_cnn, digits_qat, digits_data):
    (x_train, y_train), (x_test, y_test) = digits_data
    return digits_cnn, digits_qat, (x_train, y_train), (x_test, y_test)


def test_float_cnn_agrees_with_keras_in_onnxruntime(trained, tmp_path):
    model, _, _, (x_test, y_test) = trained
    path = tmp_path / "float_cnn.onnx"
    result = convert.to_onnx(model, path, validation_data=x_test)
    assert path.read_bytes() == bytes(result) and result.path == os.fspath(path)
    assert os.listdir(tmp_path) == ["float_cnn.onnx"]  # no temporary file left
    onnx.checker.check_model(onnx.load(path))
    reference, got = model.predict(x_test, verbose=0), ort_only(path.read_bytes(), x_test)
    assert np.max(np.abs(reference - got)) < 1e-4  # measured 3e-6
    assert np.mean(got.argmax(-1) == y_test) == pytest.approx(model.evaluate(x_test, y_test, verbose=0)[1], abs=1e-6)
    report = result.report  # its figures are onnxruntime's and NumPy's on the same (first 300) samples
    n = report.samples
    # Between a float file and its model, the error is float32 rounding (~1e-6 here): its exact value changes with
    # the kernels Keras picks for a batch size, which differ between CPUs (AVX2-only: 4.8e-6 against 5.7e-6 from a
    # second run). Both runs must see rounding noise of the same size, far below the 1e-4 a wrong file shows.
    assert report.max_abs_error == pytest.approx(np.max(np.abs(reference[:n] - got[:n])), rel=0.5)
    assert report.sqnr_db == pytest.approx(np_sqnr(reference[:n], got[:n]), abs=3.0)
    assert report.passed and report.file_format == "ONNX" and report.min_sqnr_db == 50.0
    assert "ONNX float32" in str(report)


def test_qat_model_exports_as_qdq_and_onnxruntime_agrees(trained, tmp_path):
    model, qat, _, (x_test, y_test) = trained
    result = convert.to_onnx(qat, tmp_path / "qat_cnn.onnx", validation_data=x_test)
    proto = onnx.load(tmp_path / "qat_cnn.onnx")
    counts = nodes(result)
    initializers = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    activations = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(activations) == 5  # the input and the outputs of the 2 convs and 2 dense layers
    weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers]
    assert counts["DequantizeLinear"] == 5 + 4 and len(weights) == 4
    # U8U8: weights uint8 around zero point 128 (exact in onnxruntime's kernels on every x86 CPU, see test_onnx_cpus)
    assert {initializers[n.input[0]].dtype for n in weights} == {np.dtype("uint8")}
    assert {int(z) for n in weights for z in np.atleast_1d(initializers[n.input[2]])} == {128}
    assert {initializers[n.input[1]].dtype for n in activations} == {np.dtype("float32")}

    # The int8 weights are the QAT model's fake-quantized kernels (TensorFlow's FakeQuant), exactly.
    dequantized = []
    for node in weights:
        q, scale, zero = (initializers[name] for name in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[axis] = -1
        dequantized.append((q.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape))
    expected = []
    for layer in qat.layers:
        if type(layer).__name__ != "QuantizeWrapper":
            continue
        kernel = layer.layer.kernel.numpy()
        low = next(w for w in layer.weights if w.path.endswith("kernel_min")).numpy()
        high = next(w for w in layer.weights if w.path.endswith("kernel_max")).numpy()
        if low.ndim:  # a conv kernel (kh, kw, in, out), per output channel -> ONNX's (out, in, kh, kw)
            fake = tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, low, high, 8, True).numpy()
            expected.append(fake.transpose(3, 2, 0, 1))
        else:
            expected.append(tf.quantization.fake_quant_with_min_max_vars(kernel, low, high, 8, True).numpy())
    assert sorted(w.shape for w in dequantized) == sorted(w.shape for w in expected)
    for want in expected:
        assert any(w.shape == want.shape and np.allclose(w, want, atol=1e-6) for w in dequantized)

    reference, got = qat.predict(x_test, verbose=0), ort_only(bytes(result), x_test)
    truth = np_sqnr(reference, got)
    assert truth > 45  # measured 51.4 dB (40.4 with float weights that onnxruntime re-quantizes per tensor)
    assert np.mean(reference.argmax(-1) == got.argmax(-1)) > 0.99
    assert np.mean(got.argmax(-1) == y_test) >= qat.evaluate(x_test, y_test, verbose=0)[1] - 0.01
    report = result.report
    n = report.samples
    assert report.sqnr_db == pytest.approx(np_sqnr(reference[:n], got[:n]), abs=1e-3)
    assert report.source == "quantization-aware" and report.ops == 5 and report.min_sqnr_db == 33.25
    float_file = convert.to_onnx(model, validate=False)
    assert len(result) < 0.35 * len(float_file)  # int8 weights


def _scale_activation(content, factor, occurrence=0):
    """The file with the scale of the `occurrence`-th activation QuantizeLinear (and its DequantizeLinear) times
    `factor`: a wrong range."""
    proto = onnx.load_from_string(bytes(content))
    node = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"][occurrence]
    for tensor in proto.graph.initializer:
        if tensor.name == node.input[1]:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * np.float32(factor), tensor.name))
    return proto.SerializeToString()


def test_a_broken_file_fails_validation_and_nothing_is_written(trained, tmp_path, monkeypatch):
    _, qat, _, (x_test, _) = trained
    reference = qat.predict(x_test, verbose=0)  # first: a Sequential's first predict can rename its input tensor
    good = convert.to_onnx(qat, validate=False)
    broken = _scale_activation(good, 0.5, occurrence=2)  # the second conv's output range halved
    truth = np_sqnr(reference, ort_only(broken, x_test))
    report = onnx_lib.compare(qat, broken, x_test)
    assert report.sqnr_db == pytest.approx(truth, abs=1e-3)
    assert truth < report.min_sqnr_db < np_sqnr(reference, ort_only(good, x_test))  # measured 19.8 < 33.25 < 51.4
    assert not report.passed

    export = onnx_lib._export
    # The same fault in a fresh export (its input named as the model's input is named now).
    monkeypatch.setattr(onnx_lib, "_export", lambda *args: _scale_activation(export(*args), 0.5, occurrence=2))
    path = tmp_path / "broken.onnx"
    with pytest.raises(ValidationError, match="does not match") as error:
        convert.to_onnx(qat, path, validation_data=x_test)
    assert not os.listdir(tmp_path)
    assert error.value.report.file_format == "ONNX" and not error.value.report.passed
    with pytest.warns(UserWarning, match="does not match"):
        kept = convert.to_onnx(qat, path, validation_data=x_test, on_mismatch="warn")
    assert not kept.report.passed and path.read_bytes() == bytes(kept)

    # A float file of another model with the same inputs and outputs: the wrong function, caught.
    other = build_cnn()
    monkeypatch.setattr(onnx_lib, "_export", lambda *args: export(other, None))
    # Refused either by validation or, when the two models' input tensors are named apart, by the input check.
    with pytest.raises((ValidationError, ConversionError), match="does not match|inputs the model does not have"):
        convert.to_onnx(trained[0], tmp_path / "other.onnx", validation_data=x_test)
    assert not (tmp_path / "other.onnx").exists()


def test_uncalled_models_with_several_inputs_and_outputs(tmp_path):
    """Keras's own export refuses a model that was never called; inputs match by name, outputs by key/order."""
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    outputs = {"logits": keras.layers.Dense(5)(joined), "score": keras.layers.Dense(1)(joined)}
    dict_model = keras.Model({"a": a, "b": b}, outputs)
    list_model = keras.Model([b, a], [outputs["score"], outputs["logits"]])
    rng = np.random.default_rng(0)
    data = {"a": rng.random((40, 4), "float32"), "b": rng.random((40, 3), "float32")}
    for model in (dict_model, list_model):
        with pytest.raises(ValueError, match="never called"):
            model.export(str(tmp_path / "keras.onnx"), format="onnx", verbose=False)
        result = convert.to_onnx(model, validation_data=data)
        got = ort_outputs(result, data)
        want = model.predict(data, verbose=0)
        want = list(want.values()) if isinstance(want, dict) else want
        assert sorted(v.shape for v in got.values()) == sorted(v.shape for v in want)
        for value in want:
            assert any(g.shape == value.shape and np.allclose(g, value, atol=1e-5) for g in got.values())
        assert len(result.report.outputs) == 2  # both outputs were validated, not only the first
    assert sorted(ort_outputs(convert.to_onnx(dict_model, validation_data=data), data)) == ["logits", "score"]


def test_normalization_grouped_convolutions_and_gelu_convert(tmp_path):
    """EfficientNet's Normalization (tensors captured as extra graph inputs), ConvNeXt's grouped convolutions
    (an XLA function call left in the graph) and exact GELU (Erfc, which tf2onnx lacks) export as plain ONNX."""
    inputs = keras.Input((8, 8, 6), name="image")
    normalization = keras.layers.Normalization(axis=-1)
    x = normalization(inputs)
    x = keras.layers.Conv2D(6, 3, groups=6, padding="same", activation="gelu")(x)
    x = keras.layers.Conv2D(12, 3, groups=3, strides=2)(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    rng = np.random.default_rng(0)
    normalization.adapt(rng.normal(2.0, 3.0, size=(32, 8, 8, 6)).astype("float32"))
    x = rng.normal(2.0, 3.0, size=(32, 8, 8, 6)).astype("float32")
    result = convert.to_onnx(model, validation_data=x)
    proto = onnx.load_from_string(bytes(result))
    assert [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}] == ["image"]
    groups = sorted(a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group")
    assert groups == [3, 6] and nodes(result)["Erf"] == 1
    assert np.max(np.abs(ort_only(result, x) - model.predict(x, verbose=0))) < 1e-4
    grouped = model.layers[2]  # restored
    assert "convolution_op" not in vars(grouped) and grouped.activation is keras.activations.gelu
    assert keras.ops.is_tensor(normalization.mean)


def test_opset_and_mixed_precision(trained):
    model = trained[0]
    x = trained[3][0]
    assert onnx.load_from_string(bytes(convert.to_onnx(model, opset=13, validate=False))).opset_import[0].version == 13
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_cnn()
    finally:
        keras.config.set_dtype_policy("float32")
    mixed.set_weights(model.get_weights())
    assert mixed.layers[0].compute_dtype == "bfloat16"
    result = convert.to_onnx(mixed, validation_data=x)  # a float32 copy with the same weights
    session = onnxruntime.InferenceSession(bytes(result), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    proto = onnx.load_from_string(bytes(result))
    casts = {a.i for n in proto.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    assert onnx.TensorProto.BFLOAT16 not in casts | {t.data_type for t in proto.graph.initializer}
    assert np.max(np.abs(ort_only(result, x) - model.predict(x, verbose=0))) < 1e-4


class _Erfinv(keras.layers.Layer):
    def call(self, x):
        return keras.ops.erfinv(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(opset=10), "opset"),
        (dict(opset=19), "opset"),
        (dict(opset="15"), "opset"),
        (dict(opset=True), "opset"),
        (dict(on_mismatch="ignore"), "on_mismatch"),
        (dict(max_samples=0), "max_samples"),
        (dict(validation_data=np.zeros((10, 9, 9, 1), "float32")), "shape"),
        (dict(validation_data=np.full((10, 8, 8, 1), np.nan, "float32")), "NaN"),
    ],
)
def test_bad_arguments_fail_before_the_export(trained, tmp_path, monkeypatch, kwargs, match):
    monkeypatch.setattr(onnx_lib, "_export", lambda *args: pytest.fail("exported"))
    with pytest.raises(ValueError, match=match):
        convert.to_onnx(trained[0], tmp_path / "out.onnx", **kwargs)
    assert not os.listdir(tmp_path)


def test_bad_models_and_paths(trained, tmp_path, monkeypatch):
    model, qat, (x_train, _), _ = trained
    with pytest.raises(ValueError, match="`model` must be a Keras 3 keras.Model"):
        convert.to_onnx(object())
    with pytest.raises(ValueError, match="built with known inputs"):
        convert.to_onnx(keras.Sequential([keras.layers.Dense(2)]))
    fresh = quantization.quantize_model(model)  # its activation ranges were never set
    with pytest.raises(ValueError, match="never set by training"):
        convert.to_onnx(fresh)
    monkeypatch.setattr(onnx_lib, "_export", lambda *args: pytest.fail("exported"))
    with pytest.raises(ValueError, match="does not exist"):
        convert.to_onnx(model, tmp_path / "missing" / "m.onnx")
    assert not os.listdir(tmp_path)


def test_unsupported_op_is_named(tmp_path):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(_Erfinv(name="my_erfinv")(inputs)))
    with pytest.raises(ConversionError, match="Erfinv") as error:
        convert.to_onnx(model, tmp_path / "m.onnx")
    assert "my_erfinv" in str(error.value)
    assert error.value.ops == ["Erfinv"] and error.value.layers == ["my_erfinv"]
    assert not os.listdir(tmp_path)


class _Offset(keras.layers.Layer):
    """Holds a tensor outside its weights (as KerasHub's ViT holds its position ids): a traced function captures it,
    and tf2onnx would make it a graph input."""

    def build(self, input_shape):
        self.offset = keras.ops.ones(input_shape[1:]) * 0.5

    def call(self, x):
        return x + self.offset


class _Offsets(keras.layers.Layer):
    """Holds its tensors in a list: the export does not reach them, so they stay captured."""

    def build(self, input_shape):
        self.offsets = [keras.ops.ones(input_shape[1:])]

    def call(self, x):
        return x + self.offsets[0]


def test_tensor_attributes_become_constants(tmp_path):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(_Offset(name="offset")(inputs)))
    x = np.random.default_rng(0).random((16, 4)).astype("float32")
    result = convert.to_onnx(model, tmp_path / "m.onnx", validation_data=x)
    assert [i.name for i in onnx.load(tmp_path / "m.onnx").graph.input] == ["x"]  # not the captured tensor
    np.testing.assert_allclose(ort_only(bytes(result), x), model.predict(x, verbose=0), atol=1e-5)
    assert isinstance(model.get_layer("offset").offset, tf.Tensor)  # restored after the export


def test_captured_tensors_are_named(tmp_path):
    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2)(_Offsets(name="offsets")(inputs)))
    with pytest.raises(ConversionError, match="inputs the model does not have") as error:
        convert.to_onnx(model, tmp_path / "m.onnx")
    assert "offsets" in str(error.value) and "add_weight" in str(error.value)
    assert not os.listdir(tmp_path)


def test_save_writes_atomically(trained, tmp_path):
    result = convert.to_onnx(trained[0], validate=False)
    assert result.report is None and result.path is None
    assert result.save(tmp_path / "saved.onnx") == os.fspath(tmp_path / "saved.onnx")
    assert (tmp_path / "saved.onnx").read_bytes() == bytes(result) and os.listdir(tmp_path) == ["saved.onnx"]
    with pytest.raises(ValueError, match="does not exist"):
        result.save(tmp_path / "missing" / "x.onnx")


def test_synthetic_validation_warns(trained):
    with pytest.warns(UserWarning, match="synthetic"):
        result = convert.to_onnx(trained[0])
    assert result.report.synthetic and result.report.samples == 100


# keras.applications families, weights=None, at a small input, validated on synthetic images. Seconds measured
# on 2 cores: MobileNetV2 ~5, MobileNetV3Small ~5, EfficientNetB0 ~11 (its Normalization layer).
FAMILIES = {
    "MobileNetV2": dict(input_shape=(32, 32, 3), alpha=0.35),
    "MobileNetV3Small": dict(input_shape=(32, 32, 3), alpha=0.75),
    "EfficientNetB0": dict(input_shape=(32, 32, 3)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_applications_convert(name):
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, classes=10, classifier_activation=None, **FAMILIES[name])
    x = np.random.default_rng(0).uniform(0, 255, size=(16, 32, 32, 3)).astype("float32")
    if name == "MobileNetV2":
        x = x / 127.5 - 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = convert.to_onnx(model, validation_data=x)
    reference, got = model.predict(x, verbose=0), ort_only(result, x)
    assert np.max(np.abs(reference - got)) <= 1e-4 * max(1.0, np.max(np.abs(reference)))
