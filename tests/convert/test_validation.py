"""Validation that can fail: thresholds by source, every output, decisive top-1, uncalibrated QAT, no data.

Ground truth is LiteRT's interpreter (`ai_edge_litert`) run here by signature name, with NumPy
quantization and the NumPy SQNR formula, independently of kopt's own runner.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from litert_truth import count_ops, decisive, litert, np_sqnr, only_output, output_scale, scale_activation

from kopt import convert, quantization
from kopt.convert import tflite as tflite_lib
from kopt.convert import validation
from kopt.errors import ValidationError
from kopt.demo import build_cnn

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
L = keras.layers


@pytest.fixture(scope="module")
def digits(digits_data):
    return digits_data


@pytest.fixture(scope="module")
def qat_digits(digits_cnn, digits_qat):
    return digits_cnn, digits_qat


def test_qat_file_is_held_to_the_strict_defaults_and_the_report_matches_litert(digits, qat_digits):
    _, (x_test, _) = digits
    _, qat = qat_digits
    tflite = convert.to_tflite(qat, validation_data=x_test)
    report = tflite.report
    assert (report.source, report.mode, report.default_thresholds) == ("quantization-aware", "int8", True)
    ops = count_ops(tflite)  # CONV_2D x2, MAX_POOL_2D, RESHAPE, FULLY_CONNECTED x2
    assert report.ops == ops == 6
    assert (report.min_sqnr_db, report.min_top1_agreement) == (pytest.approx(35 - 0.35 * ops), 0.95)
    assert report.min_sqnr_db > 12.0 + 20  # far stricter than the documented 12 dB for post-training files
    x = x_test[:report.samples]
    reference = qat.predict(x, verbose=0)
    got = only_output(tflite, x)
    truth = np_sqnr(reference, got)
    assert report.sqnr_db == pytest.approx(truth, abs=1e-3)
    assert truth > 40  # measured 53.8 dB: the file computes what the QAT model computes
    assert report.max_abs_error == pytest.approx(np.max(np.abs(reference - got)), rel=1e-5)
    assert "quantization-aware" in str(report) and "SQNR >= 32.9 dB (default for 6 ops)" in str(report)


def test_default_thresholds_reject_a_qat_file_with_one_wrong_scale(digits, qat_digits, monkeypatch, tmp_path):
    _, (x_test, _) = digits
    _, qat = qat_digits
    good = convert.to_tflite(qat, validate=False)
    # The first convolution's output range halved, as a bad range or a wrong scale would make it.
    broken = scale_activation(good, "CONV_2D", 0.5)
    truth = np_sqnr(qat.predict(x_test, verbose=0), only_output(broken, x_test))
    # Still a plausible file: every op integer, top-1 nearly always right, and above the post-training
    # threshold (measured 21.5 dB), so only the strict QAT default catches it.
    report = tflite_lib.compare(qat, broken, x_test, "int8")
    assert 12.0 < truth < report.min_sqnr_db  # above the post-training files' documented 12 dB
    assert report.sqnr_db == pytest.approx(truth, abs=1e-3) and not report.passed
    assert report.failed_outputs == [report.outputs[0].name]
    assert tflite_lib.compare(qat, good, x_test, "int8").passed

    # Through to_tflite: the broken file is refused and nothing is written.
    monkeypatch.setattr(tflite_lib, "_convert", lambda *args: scale_activation(good, "CONV_2D", 0.5))
    path = tmp_path / "broken.tflite"
    with pytest.raises(ValidationError, match="does not match") as error:
        convert.to_tflite(qat, path, validation_data=x_test)
    assert not list(tmp_path.iterdir())
    refused = error.value.report  # the report of the refused file: its figure is LiteRT's on the samples it used
    x = x_test[:refused.samples]
    assert refused.sqnr_db == pytest.approx(np_sqnr(qat.predict(x, verbose=0), only_output(broken, x)), abs=1e-3)


def test_default_thresholds_reject_a_file_whose_qat_range_changed(digits, qat_digits):
    _, (x_test, _) = digits
    _, qat = qat_digits
    tflite = convert.to_tflite(qat, validate=False)
    wrapper = next(layer for layer in qat.layers if isinstance(layer, quantization.QuantizeWrapper))
    variable = next(v for v in wrapper.weights if v.name == "activation_max")
    kept = variable.numpy()
    try:
        variable.assign(kept / 2)  # the model's range no longer matches the one in the file
        reference = qat.predict(x_test, verbose=0)
        truth = np_sqnr(reference, only_output(tflite, x_test))
        report = tflite_lib.compare(qat, tflite, x_test, "int8")
    finally:
        variable.assign(kept)
    assert report.sqnr_db == pytest.approx(truth, abs=1e-3)
    assert truth < report.min_sqnr_db and not report.passed


def test_post_training_file_gets_the_looser_defaults(digits, qat_digits):
    (x_train, _), (x_test, _) = digits
    model, _ = qat_digits
    report = convert.to_tflite(model, representative_data=x_train[:200], validation_data=x_test).report
    # The documented post-training int8 defaults (to_tflite's docstring): 12 dB, 95%.
    assert (report.source, report.min_sqnr_db, report.min_top1_agreement) == ("post-training", 12.0, 0.95)
    given = convert.to_tflite(model, representative_data=x_train[:200], validation_data=x_test,
                              min_sqnr_db=5, min_top1_agreement=0.5).report
    assert (given.min_sqnr_db, given.min_top1_agreement, given.default_thresholds) == (5, 0.5, False)


def test_qat_default_sqnr_falls_with_the_files_depth_down_to_the_post_training_one():
    assert validation.default_thresholds("int8", True, ops=6) == (32.9, 0.95)
    assert validation.default_thresholds("int8", True, ops=40) == (21.0, 0.95)
    assert validation.default_thresholds("int8", True, ops=69) == (12.0, 0.95)  # the floor: post-training's
    assert validation.default_thresholds("int8", False, ops=6) == (12.0, 0.95)
    assert validation.default_thresholds("dynamic", True, ops=6) == (20.0, 0.97)  # QAT changes only int8


def test_decisive_samples_formula():
    reference = np.array([[0.0, 1.0, 0.99], [0.0, 1.0, 0.5], [2.55, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask, margin = validation.decisive_samples(reference)
    assert margin == pytest.approx(2 * 2.55 / 255)  # two int8 steps of the output's range
    np.testing.assert_array_equal(mask, [False, True, True, False])
    mask, margin = validation.decisive_samples(reference, scale=0.3)  # the file's output step is coarser
    assert margin == pytest.approx(0.6)
    np.testing.assert_array_equal(mask, [False, False, True, False])


def test_top1_agreement_counts_only_decisive_samples():
    # logit 1 trails logit 0 by 0.001 * x1 (a near-tie int8 cannot resolve); logit 2 = 4 * x1 decides
    # the other half of the samples clearly.
    model = keras.Sequential([keras.Input((2,)), L.Dense(3, use_bias=False)])
    model.layers[0].set_weights([np.array([[1.0, 1.0, 0.0], [0.0, 0.001, 4.0]], "float32")])
    rng = np.random.default_rng(0)
    tied = np.stack([rng.uniform(0.5, 1, 100), rng.uniform(-0.1, 0.1, 100)], -1)
    clear = np.stack([rng.uniform(0, 0.2, 100), rng.uniform(0.5, 1, 100)], -1)
    x = np.concatenate([tied, clear]).astype("float32")
    tflite = convert.to_tflite(model, representative_data=x, validation_data=x)
    report = tflite.report
    reference = model.predict(x, verbose=0)
    got = only_output(tflite, x)
    clear = decisive(reference, output_scale(tflite, "output_0"))
    assert clear.sum() == 100 and not clear[:100].any()
    assert report.tied_samples == report.outputs[0].tied_samples == 100
    assert report.outputs[0].decisive_samples == 100
    all_samples = np.mean(reference.argmax(-1) == got.argmax(-1))
    assert all_samples < validation.THRESHOLDS["int8"][1]  # near-ties flip: counting them would fail the file
    assert report.top1_agreement == np.mean(reference[clear].argmax(-1) == got[clear].argmax(-1)) == 1.0
    assert "100 near-tied excluded" in str(report)


@pytest.mark.parametrize("output_type", ["int8", "float32"])
def test_tie_margin_is_at_least_two_steps_of_the_files_softmax_output(output_type):
    # A near-uniform softmax: its values span less than 255 of TFLite's fixed int8 softmax steps (1/256).
    model = keras.Sequential([keras.Input((6,)), L.Dense(5, activation="softmax")])
    x = np.random.default_rng(0).random((64, 6)).astype("float32")
    tflite = convert.to_tflite(model, representative_data=x, output_type=output_type, min_sqnr_db=0,
                               min_top1_agreement=0)
    output = tflite.report.outputs[0]
    reference = model.predict(x, verbose=0)
    assert (reference.max() - reference.min()) / 255 < 1 / 256
    assert convert.inspect(tflite).op_counts.get("DEQUANTIZE", 0) == (output_type == "float32")
    assert output.tie_margin == pytest.approx(2 / 256)  # read from the file, also behind a final DEQUANTIZE
    top2 = np.sort(reference, -1)[:, -2:]
    assert output.tied_samples == np.sum(top2[:, 1] - top2[:, 0] <= 2 / 256)


def test_all_samples_near_tied_leaves_top1_to_sqnr():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, kernel_initializer="zeros", bias_initializer="ones")])
    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    report = convert.to_tflite(model, quantization=None, validation_data=x).report
    assert report.top1_agreement is None and report.tied_samples == 32 and report.passed
    assert "all 32 samples near-tied" in str(report)


def test_an_uncalibrated_qat_model_is_refused_with_the_layers_named(digits):
    (x_train, _), (x_test, _) = digits
    qat = quantization.quantize_model(build_cnn())
    quantized = [layer.name for layer in qat.layers if any(v.name.endswith("_seen") for v in layer.weights)]
    for kwargs in ({"validation_data": x_test}, {"validate": False}):
        with pytest.raises(ValueError, match="never set by training") as error:
            convert.to_tflite(qat, **kwargs)
        message = str(error.value)
        assert all(f"{name} (" in message for name in quantized) and "(input)" in message and "Fit" in message
    # The calibration pass the message suggests sets every range and trains no weight; then it converts.
    kernels = [w.numpy() for w in qat.trainable_weights]
    for start in (0, 32):
        qat(x_train[start:start + 32], training=True)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(kernels, qat.trainable_weights))
    assert convert.to_tflite(qat, validation_data=x_test).report.sqnr_db > 30
    # One range reset: only that layer is named.
    seen = next(v for v in qat.layers[2].weights if v.name.endswith("_seen"))
    seen.assign(0.0)
    with pytest.raises(ValueError, match="1 quantizers") as error:
        convert.to_tflite(qat, validate=False)
    assert f"{qat.layers[2].name} (" in str(error.value) and f"{qat.layers[1].name} (" not in str(error.value)


def test_unused_range_of_a_fused_output_is_not_reported_as_uncalibrated():
    # Conv -> BN -> ReLU6: BN folds into the conv, whose output range is the ReLU's (quantize_output=False).
    model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(), L.ReLU(6.0),
                              L.Flatten(), L.Dense(3)])
    qat = quantization.quantize_model(model)
    fused = [layer for layer in qat.layers if getattr(layer, "quantize_output", True) is False]
    x = np.random.default_rng(0).random((32, 8, 8, 3)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((32, 3)), epochs=1, verbose=0)
    unused = [v for layer in fused for v in layer.weights if v.name.endswith("_seen") and v.numpy() == 0]
    assert unused  # a range training never sets, because the graph never uses it
    tflite = convert.to_tflite(qat, validation_data=x)
    assert tflite.report.sqnr_db == pytest.approx(np_sqnr(qat.predict(x, verbose=0), only_output(tflite, x)),
                                                  abs=1e-3)


@pytest.mark.parametrize("mode", [None, "float16", "dynamic"])
def test_float_modes_validate_on_synthetic_inputs_without_data(qat_digits, mode):
    model, _ = qat_digits
    with pytest.warns(UserWarning, match="synthetic"):
        tflite = convert.to_tflite(model, quantization=mode)
    report = tflite.report
    assert report.synthetic and report.samples == 100 and report.mode == mode
    x = np.random.default_rng(0).uniform(0, 1, (100, 8, 8, 1)).astype("float32")  # the documented inputs
    truth = np_sqnr(model.predict(x, verbose=0), only_output(tflite, x))
    # float16 and dynamic files: the file's own rounding dominates, the same in both runs. A float32 file agrees with
    # its model to float32 rounding (~128 dB), whose exact figure changes with the kernels Keras picks for a batch
    # size, which differ between CPUs (AVX2-only: 128.114 against 128.124 dB from a second run).
    assert report.sqnr_db == pytest.approx(truth, abs=3.0 if mode is None else 1e-3)
    assert truth > {None: 90, "float16": 40, "dynamic": 20}[mode]


def test_int8_of_a_float_model_still_needs_representative_data(qat_digits):
    model, _ = qat_digits
    with pytest.raises(ValueError, match="representative_data"):
        convert.to_tflite(model)


def two_in_two_out():
    image = keras.Input((8, 8, 1), name="image")
    aux = keras.Input((4,), name="aux")
    x = L.Flatten()(L.Conv2D(8, 3, activation="relu")(image))
    x = L.Concatenate()([x, L.Dense(8, activation="relu")(aux)])
    digit = L.Dense(10, name="digit")(x)
    scaled = L.Dense(10, name="scaled", kernel_initializer=keras.initializers.RandomNormal(0, 2.0))(x)
    return image, aux, digit, scaled


@pytest.fixture(scope="module")
def multi(digits):
    (x_train, y_train), (x_test, _) = digits
    keras.utils.set_random_seed(0)
    image, aux, digit, scaled = two_in_two_out()
    model = keras.Model([image, aux], [digit, scaled])
    aux_train = np.random.default_rng(1).random((len(x_train), 4)).astype("float32")
    aux_test = np.random.default_rng(2).random((len(x_test), 4)).astype("float32")
    model.compile(keras.optimizers.Adam(1e-3), [LOSS, "mse"])
    model.fit([x_train, aux_train], [y_train, 30 * np.eye(10)[y_train]], epochs=3, verbose=0)
    return model, (x_train, aux_train, y_train), (x_test, aux_test)


def test_multi_input_multi_output_with_list_dict_and_dataset_data(multi):
    model, (x_train, aux_train, y_train), (x_test, aux_test) = multi
    # The same graph with its inputs in both orders: the interpreter's own input order (whatever it is)
    # differs from model.inputs for one of them, so only matching by name passes both.
    image, aux = model.inputs
    reversed_model = keras.Model([aux, image], model.outputs)
    for m, data in ((model, [x_test, aux_test]), (reversed_model, [aux_test, x_test])):
        float_file = convert.to_tflite(m, quantization=None, validation_data=data)
        assert float_file.report.sqnr_db > 90 and len(float_file.report.outputs) == 2

    as_list = convert.to_tflite(model, representative_data=[x_train, aux_train],
                                validation_data=[x_test, aux_test])
    as_dict = convert.to_tflite(model, representative_data={"aux": aux_train, "image": x_train},
                                validation_data={"image": x_test, "aux": aux_test})
    pairs = tf.data.Dataset.from_tensor_slices(((x_train, aux_train), (y_train, y_train))).batch(32)
    dicts = ({"image": x_train[i:i + 16], "aux": aux_train[i:i + 16]} for i in range(0, len(x_train), 16))
    as_dataset = convert.to_tflite(model, representative_data=pairs, validation_data=[x_test, aux_test])
    as_generator = convert.to_tflite(model, representative_data=dicts, validation_data=[x_test, aux_test])
    assert bytes(as_list) == bytes(as_dict) == bytes(as_dataset) == bytes(as_generator)  # same 300 samples

    report = as_list.report
    assert [o.name for o in report.outputs] == ["digit", "scaled"]
    n = report.samples  # max_samples=300 of the 450 test samples
    digit, scaled = model.predict([x_test[:n], aux_test[:n]], verbose=0)
    truth = litert(as_list, {"image": x_test[:n], "aux": aux_test[:n]})  # outputs named by model.export
    per_output = {"digit": np_sqnr(digit, truth["output_0"]), "scaled": np_sqnr(scaled, truth["output_1"])}
    for output in report.outputs:
        assert output.sqnr_db == pytest.approx(per_output[output.name], abs=1e-3)
    assert report.sqnr_db == pytest.approx(min(per_output.values()), abs=1e-3)  # the worst output decides
    assert np.abs(scaled).max() > 3 * np.abs(digit).max()  # swapped outputs would not pass unnoticed
    assert report.outputs[0].top1_agreement == np.mean(
        (digit.argmax(-1) == truth["output_0"].argmax(-1))[decisive(digit, output_scale(as_list, "output_0"))])


def test_one_bad_output_fails_the_file(multi):
    model, (x_train, aux_train, _), (x_test, aux_test) = multi
    tflite = convert.to_tflite(model, representative_data=[x_train, aux_train], validate=False)
    report = tflite_lib.compare(model, tflite, [x_test, aux_test], "int8")
    worst, best = sorted(report.outputs, key=lambda o: o.sqnr_db)
    between = (worst.sqnr_db + best.sqnr_db) / 2
    strict = tflite_lib.compare(model, tflite, [x_test, aux_test], "int8", min_sqnr_db=between)
    assert strict.failed_outputs == [worst.name] and not strict.passed and strict.sqnr_db == worst.sqnr_db


def test_dict_structured_model_and_multi_input_qat(multi):
    model, (x_train, aux_train, y_train), (x_test, aux_test) = multi
    image, aux = model.inputs
    digit, scaled = model.outputs
    by_key = keras.Model({"pixels": image, "extra": aux}, {"a": digit, "b": scaled})
    tflite = convert.to_tflite(by_key, quantization=None, validation_data={"pixels": x_test, "extra": aux_test})
    assert sorted(o.name for o in tflite.report.outputs) == ["a", "b"]
    n = tflite.report.samples
    truth = litert(tflite, {"image": x_test[:n], "aux": aux_test[:n]})
    reference = by_key.predict({"pixels": x_test[:n], "extra": aux_test[:n]}, verbose=0)
    for output in tflite.report.outputs:  # float32 file: rounding noise only, ~137 dB
        assert output.sqnr_db == pytest.approx(np_sqnr(reference[output.name], truth[output.name]), rel=1e-3)
    with pytest.raises(ValueError, match="without the model input 'aux'"):
        convert.to_tflite(model, quantization=None, validation_data={"image": x_test})
    with pytest.raises(ValueError, match="2 inputs"):
        convert.to_tflite(model, quantization=None, validation_data=x_test)

    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), [LOSS, "mse"])
    qat.fit([x_train, aux_train], [y_train, 30 * np.eye(10)[y_train]], epochs=1, verbose=0)
    report = convert.to_tflite(qat, validation_data=[x_test, aux_test]).report
    assert report.source == "quantization-aware" and len(report.outputs) == 2
    truth = litert(convert.to_tflite(qat, validate=False), {"image": x_test[:300], "aux": aux_test[:300]})
    digit, scaled = qat.predict([x_test[:300], aux_test[:300]], verbose=0)
    assert report.sqnr_db == pytest.approx(
        min(np_sqnr(digit, truth["output_0"]), np_sqnr(scaled, truth["output_1"])), abs=1e-3)
    with pytest.warns(UserWarning, match="synthetic"):
        assert len(convert.to_tflite(qat).report.outputs) == 2  # synthetic inputs in each input's range
