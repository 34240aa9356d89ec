"""to_tflite, inspect, evaluate, benchmark: checked with LiteRT's interpreter."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from litert_truth import decisive, np_sqnr, only_output, output_scale

from kopt import convert, quantization
from kopt.errors import ConversionError, ValidationError

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def trained(digits_cnn, digits_data):
    (x_train, y_train), (x_test, y_test) = digits_data
    return digits_cnn, (x_train, y_train), (x_test, y_test)


def test_post_training_int8_keeps_accuracy_and_is_full_integer(trained, tmp_path):
    model, (x_train, _), (x_test, y_test) = trained
    path = tmp_path / "ptq.tflite"
    tflite = convert.to_tflite(model, path, representative_data=x_train, validation_data=x_test)
    assert path.read_bytes() == bytes(tflite) and tflite.path == os.fspath(path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]
    float_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    int8_accuracy = convert.evaluate(path, x_test, y_test)
    assert int8_accuracy >= float_accuracy - 0.01, (float_accuracy, int8_accuracy)
    info = convert.inspect(path)
    for op in info.ops:  # every activation tensor of every op is an integer tensor
        for tensor in op["inputs"] + op["outputs"]:
            if not tensor["constant"]:
                assert tensor["dtype"] in ("int8", "int32"), (op["op"], tensor)
    assert {t["dtype"] for op in info.ops if op["op"] == "CONV_2D" for t in op["inputs"][:2]} == {"int8"}
    # The report's figures are what LiteRT and NumPy give on the same (first 300) test samples.
    report = tflite.report
    x = x_test[:report.samples]
    reference, got = model.predict(x, verbose=0), only_output(path.read_bytes(), x)
    assert report.sqnr_db == pytest.approx(np_sqnr(reference, got), abs=1e-3)
    assert report.max_abs_error == pytest.approx(np.max(np.abs(reference - got)), rel=1e-5)
    clear = decisive(reference, output_scale(tflite, "output_0"))
    assert report.top1_agreement == np.mean(reference[clear].argmax(-1) == got[clear].argmax(-1))
    assert report.tied_samples == np.sum(~clear) and report.source == "post-training"
    assert np_sqnr(reference, got) > 25  # measured 40 dB on this model


@pytest.mark.parametrize(
    "mode, input_dtype, weight_dtype",
    [(None, "float32", "float32"), ("float16", "float32", "float16"), ("dynamic", "float32", "int8"),
     ("int16x8", "int16", "int8")],
)
def test_other_modes(trained, mode, input_dtype, weight_dtype):
    model, (x_train, _), (x_test, _) = trained
    tflite = convert.to_tflite(model, quantization=mode, representative_data=x_train[:100], validation_data=x_test)
    info = convert.inspect(tflite)
    assert info.inputs[0]["dtype"] == input_dtype
    dtypes = {t["dtype"] for t in info.tensors if t["constant"] and len(t["shape"]) == 4}
    assert weight_dtype in dtypes, dtypes
    report = tflite.report
    # The documented defaults of the float modes (to_tflite's docstring).
    documented = {None: (50.0, 0.999), "float16": (35.0, 0.99), "dynamic": (20.0, 0.97), "int16x8": (20.0, 0.97)}
    assert (report.min_sqnr_db, report.min_top1_agreement) == documented[mode]
    x = x_test[:report.samples]
    truth = np_sqnr(model.predict(x, verbose=0), only_output(tflite, x))
    assert report.sqnr_db == pytest.approx(truth, rel=1e-3)
    assert truth > {None: 90, "float16": 50, "dynamic": 25, "int16x8": 35}[mode]  # measured 131, 79, 48, 45


def test_representative_data_as_dataset_and_generator(trained):
    model, (x_train, y_train), (x_test, _) = trained
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(32)
    from_dataset = convert.to_tflite(model, representative_data=dataset, validation_data=x_test, max_samples=64)
    from_generator = convert.to_tflite(model, representative_data=(x[None] for x in x_train[:64]),
                                       validation_data=x_test)
    assert bytes(from_dataset) == bytes(from_generator)  # the same 64 samples either way


def test_float_ops_left_in_int8_mode_are_named(trained):
    model, (x_train, _), (x_test, _) = trained
    hidden = model.layers[-2].name
    qat = quantization.quantize_model(model, float_layers=[hidden])  # the hidden Dense stays float
    qat(x_train[:64], training=True)  # set the activation ranges (an uncalibrated QAT model is refused)
    with pytest.raises(ConversionError, match="FULLY_CONNECTED") as error:
        convert.to_tflite(qat, validation_data=x_test)
    assert hidden in str(error.value) and "allow_float_ops" in str(error.value)
    assert "FULLY_CONNECTED" in error.value.ops and hidden in error.value.layers
    tflite = convert.to_tflite(qat, validation_data=x_test, allow_float_ops=True)
    assert not convert.inspect(tflite).is_full_integer


def test_a_mismatch_raises_and_writes_nothing_or_warns(trained, tmp_path):
    model, (x_train, _), (x_test, _) = trained
    path = tmp_path / "model.tflite"
    with pytest.raises(ValidationError, match="does not match") as error:
        convert.to_tflite(model, path, representative_data=x_train, validation_data=x_test, min_sqnr_db=200)
    assert not os.listdir(tmp_path)
    assert error.value.report.min_sqnr_db == 200 and error.value.report.failed_outputs == ["output_0"]
    with pytest.warns(UserWarning, match="does not match"):
        tflite = convert.to_tflite(model, path, representative_data=x_train, validation_data=x_test,
                                   min_sqnr_db=200, on_mismatch="warn")
    assert not tflite.report.passed and path.exists()


def test_benchmark_and_evaluate(trained):
    model, (x_train, _), (x_test, y_test) = trained
    tflite = convert.to_tflite(model, quantization=None, validation_data=x_test)
    result = convert.benchmark(tflite, threads=1, runs=20)
    assert result.runs == 20 and 0 < result.median_ms < 1000 and float(result) == result.median_ms
    keras_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert convert.evaluate(tflite, x_test, y_test, batch_size=100) == pytest.approx(keras_accuracy, abs=1e-6)
    assert convert.evaluate(tflite, x_test, np.eye(10)[y_test]) == pytest.approx(keras_accuracy, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(representative_data=np.zeros((10, 9, 9, 1), "float32")), "shape"),
        (dict(representative_data=np.array([["a"] * 64] * 10).reshape(10, 8, 8, 1)), "numeric"),
        (dict(representative_data=np.full((10, 8, 8, 1), np.nan, "float32")), "NaN"),
        (dict(representative_data=np.zeros((0, 8, 8, 1), "float32")), "empty"),
        (dict(representative_data=iter([])), "empty"),
        (dict(representative_data=None), "representative_data"),
        (dict(quantization="int4"), "quantization"),
        (dict(quantization=None, input_type="int8"), "input_type"),
        (dict(quantization="float16", output_type="int8"), "output_type"),
        (dict(on_mismatch="ignore"), "on_mismatch"),
    ],
)
def test_bad_input_gives_a_clear_error_and_no_file(trained, tmp_path, kwargs, match):
    model, (x_train, _), _ = trained
    kwargs = {"representative_data": x_train[:50], **kwargs}
    with pytest.raises(ValueError, match=match):
        convert.to_tflite(model, tmp_path / "out.tflite", **kwargs)
    assert not os.listdir(tmp_path)


def test_path_in_a_missing_folder(trained, tmp_path):
    model, (x_train, _), _ = trained
    with pytest.raises(ValueError, match="does not exist"):
        convert.to_tflite(model, tmp_path / "missing" / "m.tflite", representative_data=x_train[:50])
    assert not os.listdir(tmp_path)


def test_not_a_keras_model():
    with pytest.raises(ValueError, match="model"):
        convert.to_tflite(object())
    with pytest.raises(ValueError, match="tflite"):
        convert.inspect(12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="No .tflite file"):
            convert.inspect("/nonexistent/model.tflite")


def test_post_training_int8_of_a_rewritten_graph_keeps_the_input_names(tmp_path):
    """An unnamed keras.Input has tensor name 'keras_tensor_N' but layer name 'input_layer_N'; the integer
    forms (here LayerNormalization without NEG) rebuild the graph, which must keep the signature's key
    (ConvNeXt's post-training int8 failed with KeyError: 'input_layer')."""
    inputs = keras.Input((6,))
    x = keras.layers.LayerNormalization()(keras.layers.Dense(8)(inputs))
    functional = keras.Model(inputs, keras.layers.Dense(3)(x))
    assert inputs.name != inputs._keras_history.operation.name
    sequential = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.LayerNormalization(),
                                   keras.layers.Dense(3)])
    data = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    for model in (functional, sequential):
        tflite = convert.to_tflite(model, str(tmp_path / "m.tflite"), quantization="int8", representative_data=data)
        assert np_sqnr(model.predict(data, verbose=0), only_output(tflite, data)) > 20.0


def test_a_cluster_preserving_qat_model_converts_without_stripping_first():
    from kopt import quantization
    from kopt.experimental.combine import Default8BitClusterPreserveQuantizeScheme

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    for layer in model.layers:  # four distinct values per kernel, as after clustering
        layer.kernel.assign(np.round(keras.ops.convert_to_numpy(layer.kernel) * 2) / 2)
    x = np.random.default_rng(0).random((64, 8)).astype("float32")
    qat = quantization.quantize_model(model, quantize_scheme=Default8BitClusterPreserveQuantizeScheme())
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((64, 3)), epochs=1, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=x)  # full int8, validated against the CQAT model itself
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tflite))
    kernels = [interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()
               if d["dtype"] == np.int8 and len(d["shape"]) == 2 and min(d["shape"]) > 1]
    distinct = [len(np.unique(keras.ops.convert_to_numpy(layer.kernel))) for layer in model.layers]
    assert sorted(len(np.unique(k)) for k in kernels) == sorted(distinct)  # per-tensor int8: one value each
