"""`auto_mixed_precision`: a digits model that int8 costs real accuracy, and how much keeping layers float wins back.

The truth is LiteRT: the chosen file runs in its interpreter here, and its accuracy is counted against the labels.
"""

import json

import numpy as np
import pytest
from litert_truth import only_output
from outlier_models import trained_weight_outlier_digits

from kopt import analysis, quantization


def _accuracy(content, x, y):
    """Top-1 accuracy of the .tflite file on (x, y), run in LiteRT."""
    return float(np.mean(only_output(content, x).argmax(-1) == y))


@pytest.fixture(scope="module")
def outlier_digits(digits_data):
    """A trained digits model whose 'logits' kernel has a huge row from a dead hidden unit: the float model is
    unchanged, per-tensor int8 of 'logits' loses accuracy."""
    (x_train, y_train), (x_test, y_test) = digits_data
    model = trained_weight_outlier_digits(x_train, y_train)
    return model, np.concatenate([x_train[:256], x_test]), np.concatenate([y_train[:256], y_test])


def test_wins_back_the_accuracy_int8_loses(outlier_digits, tmp_path):
    model, x, y = outlier_digits
    path = tmp_path / "mixed.tflite"
    result = analysis.auto_mixed_precision(model, (x, y), max_drop=0.01, path=path, max_samples=256)
    held_x, held_y = x[256:512], y[256:512]
    first, last = result.steps[0], result.chosen
    assert first.kept_float == [] and first.accuracy < result.float_accuracy - 0.02  # int8 loses real accuracy
    assert result.met and result.kept_float == ["logits"] and last.met and len(result.steps) == 2
    # the chosen file, run here in LiteRT, is as accurate as the step said and within the target
    assert _accuracy(path.read_bytes(), held_x, held_y) == pytest.approx(last.accuracy)
    assert result.float_accuracy - _accuracy(path.read_bytes(), held_x, held_y) <= 0.01
    assert result.file.mixed_precision.kept_float == ["logits"]
    assert last.size_bytes > first.size_bytes and all(s.latency_ms > 0 for s in result.steps)
    table = str(result)
    assert "logits" in table and "(all int8)" in table
    assert json.loads(json.dumps(result.to_dict()))["kept_float"] == ["logits"]
    result.plot(tmp_path / "steps.png")
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unreachable_target_is_reported_not_met(outlier_digits, caplog):
    model, x, y = outlier_digits
    with caplog.at_level("WARNING", logger="kopt"):
        result = analysis.auto_mixed_precision(model, x[:300], min_sqnr=200, max_steps=2, budget="latency",
                                               max_samples=200)
    assert not result.met and len(result.steps) <= 3 and "not met" in caplog.text
    # the files tried keep 0, 1, 2 ... of the ranked layers float; the best one is kept
    assert [len(s.kept_float) for s in result.steps] == [0, 1, 2][:len(result.steps)]
    assert result.chosen.sqnr_db == max(s.sqnr_db for s in result.steps)
    assert result.steps[0].sqnr_db < 200 and "NOT met" in str(result)


def test_bad_arguments(outlier_digits):
    model, x, y = outlier_digits
    cases = [
        (dict(), "exactly one target"),
        (dict(max_drop=0.01, min_sqnr=30), "exactly one target"),
        (dict(max_drop=0.01), "needs labels"),
        (dict(min_sqnr=30, budget="memory"), "`budget` must be one of"),
        (dict(max_drop=1.5), "`max_drop` must be a fraction"),
        (dict(min_sqnr=30, max_steps=0), "`max_steps` must be a positive integer"),
    ]
    for kwargs, message in cases:
        data = x[:50] if kwargs.get("max_drop") != 1.5 else (x[:50], y[:50])
        with pytest.raises(ValueError, match=message):
            analysis.auto_mixed_precision(model, data, **kwargs)
    qat = quantization.quantize_model(model)
    with pytest.raises(ValueError, match="float_layers=result.kept_float"):
        analysis.auto_mixed_precision(qat, x[:50], min_sqnr=30)
