"""kopt.analysis.sensitivity on the digits CNN: rows, ranking, a planted fault, QAT models, the debugger, bad input."""

import json
import logging

import keras
import numpy as np
import pytest

from kopt import analysis, convert, quantization
from kopt.analysis import _debugger


def _weighted_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def _copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


@pytest.fixture(scope="module")
def float_report(digits_cnn, digits_data):
    _, (x_test, _) = digits_data
    return analysis.sensitivity(digits_cnn, x_test[:200])


def test_one_row_per_conv_and_dense_sorted(float_report, digits_cnn, digits_data):
    _, (x_test, _) = digits_data
    report = float_report
    assert sorted(r.layer for r in report.rows) == sorted(_weighted_names(digits_cnn))
    assert {r.layer_class for r in report.rows} == {"Conv2D", "Dense"}
    only = [r.sqnr_only_db for r in report.rows]
    assert only == sorted(only)
    assert report.source == "post-training" and report.mode == "int8" and report.samples == 200
    assert not any(layer.name.startswith("kopts") for layer in digits_cnn.layers)  # the fixture is untouched
    # One layer quantized costs less than all of them; all but one, more than that one alone.
    for row in report.rows:
        assert row.sqnr_only_db > report.sqnr_all_db
        assert row.sqnr_all_but_db > report.sqnr_all_db - 1.0
    # Output ranges: the layers' outputs on the data; the quantized range (calibrated) covers them.
    for row in report.rows:
        layer = digits_cnn.get_layer(row.layer)
        values = keras.Model(digits_cnn.inputs, layer.output).predict(x_test[:200], verbose=0)
        np.testing.assert_allclose([row.output_min, row.output_max], [values.min(), values.max()], rtol=1e-5,
                                   atol=1e-6)
        assert row.range_min <= min(row.output_min, 0) + 1e-6 and row.range_max >= row.output_max - 1e-6


def test_all_quantized_matches_the_int8_file(float_report, digits_cnn, digits_data):
    """The fake-quantized model with every layer quantized agrees with the real post-training int8 file."""
    _, (x_test, _) = digits_data
    tflite = convert.to_tflite(digits_cnn, representative_data=x_test[:200], validation_data=x_test[:200])
    assert abs(tflite.report.sqnr_db - float_report.sqnr_all_db) < 3.0, (tflite.report, float_report.sqnr_all_db)


def test_debugger_figures(float_report, digits_cnn, digits_data):
    _, (x_test, _) = digits_data
    rows = {r.layer: r for r in float_report.rows}
    for row in rows.values():  # each Conv2D/Dense op: int8 rounding of its output, ~1/sqrt(12) of a step
        assert row.rmse_over_scale is not None and 0.15 < row.rmse_over_scale < 0.5, row
        assert row.ops and row.ops[0] in ("CONV_2D", "FULLY_CONNECTED")
    # The debugger's scale of the last op is the int8 step of the range kopt calibrated for that layer:
    # (max - min) / 255 of the min/max of the float output on the same data, as TFLite calibrates.
    ops = _debugger.op_statistics(digits_cnn, [x_test[:200]], False)
    last = _weighted_names(digits_cnn)[-1]
    (op,) = [o for o in ops if last in o["layers"]]
    row = rows[last]
    assert op["scale"] == pytest.approx((row.range_max - row.range_min) / 255.0, rel=1e-3)
    # Pass-through ops (max pooling, reshape) add no error of their own.
    assert all(o["rmse_over_scale"] < 1e-3 for o in ops if o["op"] in ("MAX_POOL_2D", "RESHAPE"))


def test_report_str_dict_and_plot(float_report, tmp_path):
    text = str(float_report)
    assert all(r.layer in text for r in float_report.rows) and "only (dB)" in text
    plain = json.loads(json.dumps(float_report.to_dict()))
    assert [r["layer"] for r in plain["rows"]] == [r.layer for r in float_report.rows]
    path = tmp_path / "sensitivity.png"
    assert float_report.plot(path) == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["sensitivity.png"]  # no temporary file left
    with pytest.raises(ValueError, match="path"):
        float_report.plot(tmp_path / "no_extension")


def test_planted_outlier_layer_ranks_first(digits_cnn, digits_data, caplog):
    """One output unit of the first Dense scaled by 1000 (the next Dense divides it back): the float model computes
    the same, but per-tensor int8 of that kernel and of that output now has 1000x coarser steps."""
    _, (x_test, _) = digits_data
    faulty = _copy(digits_cnn)
    dense, head = [faulty.get_layer(n) for n in _weighted_names(faulty)[-2:]]
    kernel, bias = dense.get_weights()
    kernel[:, 0] *= 1000.0
    bias[0] *= 1000.0
    dense.set_weights([kernel, bias])
    head_kernel, head_bias = head.get_weights()
    head_kernel[0] /= 1000.0
    head.set_weights([head_kernel, head_bias])
    x = x_test[:200]
    np.testing.assert_allclose(faulty.predict(x, verbose=0), digits_cnn.predict(x, verbose=0), rtol=1e-3, atol=1e-3)
    with caplog.at_level(logging.INFO, logger="kopt"):
        report = analysis.sensitivity(faulty, x, debugger=False)
    assert report.rows[0].layer == dense.name
    others = [r.sqnr_only_db for r in report.rows[1:]]
    assert report.rows[0].sqnr_only_db < min(others) - 20.0, str(report)
    # Every layer but the faulty one quantized: as good as the healthy model.
    assert report.rows[0].sqnr_all_but_db > max(r.sqnr_all_but_db for r in report.rows[1:])
    per_layer = [m for m in caplog.messages if m.startswith("sensitivity ") and "only it quantized" in m]
    assert len(per_layer) == len(report.rows)


def test_qat_model_uses_its_learned_ranges(digits_qat, digits_data):
    _, (x_test, _) = digits_data
    before = [w.copy() for w in digits_qat.get_weights()]
    report = analysis.sensitivity(digits_qat, x_test[:100], debugger=False)
    assert report.source == "quantization-aware"
    wrappers = [layer for layer in digits_qat.layers if isinstance(layer, quantization.QuantizeWrapper)]
    assert sorted(r.layer for r in report.rows) == sorted(w.layer.name for w in wrappers)
    for wrapper in wrappers:
        row = next(r for r in report.rows if r.layer == wrapper.layer.name)
        learned = {v.path.rsplit("/", 1)[-1]: float(v.numpy()) for v in wrapper.weights if len(v.shape) == 0}
        assert (row.range_min, row.range_max) == pytest.approx((learned["activation_min"], learned["activation_max"]))
    after = digits_qat.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # the model is left as it was
    # Its QAT file agrees with it: every layer quantized is close to its float model, as in training.
    assert report.sqnr_all_db > 25.0


def test_bad_input(digits_cnn, digits_data):
    _, (x_test, _) = digits_data
    with pytest.raises(ValueError, match="`model` must be a Keras 3 keras.Model"):
        analysis.sensitivity("model.keras", x_test)
    with pytest.raises(ValueError, match="`data` is empty"):
        analysis.sensitivity(digits_cnn, x_test[:0])
    with pytest.raises(ValueError, match="`data` is None"):
        analysis.sensitivity(digits_cnn, None)
    with pytest.raises(ValueError, match="`data` has samples of shape"):
        analysis.sensitivity(digits_cnn, np.zeros((4, 3), "float32"))
    with pytest.raises(ValueError, match="`mode` must be one of"):
        analysis.sensitivity(digits_cnn, x_test[:8], mode="int4")
    with pytest.raises(ValueError, match="`batch_size`"):
        analysis.sensitivity(digits_cnn, x_test[:8], batch_size=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The TFLite model does not match")  # random weights: PTQ at ~8 dB, as measured
def test_mobilenet_v2_agrees_with_its_int8_file():
    """A keras.applications coverage net: one row per layer QAT wraps, every layer quantized as the real PTQ file,
    in well under a minute (measured 22 s with the debugger, 13 s without, on 2 shared cores)."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                           classifier_activation=None)
    x = np.random.default_rng(0).uniform(-1, 1, (32, 96, 96, 3)).astype("float32")
    # weights=None leaves every BatchNormalization at mean 0 / variance 1 and the activations vanish deep down:
    # give them the data's statistics, as a trained net has.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)
    report = analysis.sensitivity(model, x, debugger=False)
    wrapped = [layer for layer in quantization.quantize_model(model).layers
               if isinstance(layer, quantization.QuantizeWrapper)]
    assert len(report.rows) == len(wrapped)
    assert report.seconds < 120
    tflite = convert.to_tflite(model, representative_data=x, validation_data=x, on_mismatch="warn")
    assert abs(tflite.report.sqnr_db - report.sqnr_all_db) < 1.5, (tflite.report, report.sqnr_all_db)
