"""Every `keras.applications` family through prune, QAT int8 and post-training int8 (issue 6).

The smallest member of each family (benchmarks/coverage.py builds them: weights=None, small inputs,
logits out, a few training steps), the same 32 images as the coverage table in benchmarks/RESULTS.md.
Each .tflite file is run in LiteRT's interpreter here and compared with the Keras model it came from;
pruning is checked on the stripped weights themselves.
"""

import pathlib
import sys
import warnings

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

# Files that convert to full int8 but do not agree with their model well enough (measured, see
# benchmarks/RESULTS.md). Kept visible: the test fails as soon as one of them starts to agree.
KNOWN_MISMATCHES = {
    "EfficientNetB0": {"qat"},
    "EfficientNetV2B0": {"qat", "ptq"},
}


# The families measured end to end in this configuration (benchmarks/RESULTS.md). NASNetMobile, Xception,
# InceptionV3, InceptionResNetV2, ConvNeXtTiny and VGG16 go through QAT to full int8 too, but their final
# figures are not measured yet (issue 6's closing note): they join this list with them.
FAMILIES = ["MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "ResNet50", "ResNet50V2",
            "EfficientNetB0", "EfficientNetV2B0", "DenseNet121"]


def _agrees(measured, min_sqnr_db, min_top1):
    return measured["sqnr_db"] >= min_sqnr_db and (measured["top1"] is None or measured["top1"] >= min_top1)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_family_prunes_quantizes_and_converts(name):
    model, x = coverage.build(name, samples=32)
    known = KNOWN_MISMATCHES.get(name, set())

    pruned, depthwise = coverage.zero_fractions(coverage.run_prune(model, x, sparsity=0.5))
    assert pruned
    for layer, (zeros, size) in pruned.items():
        assert abs(zeros - 0.5) <= max(0.01, 1 / size), f"{layer}: {zeros:.3f} zeros"
    for layer, (zeros, _) in depthwise.items():
        assert zeros < 0.05, f"{layer}: depthwise kernels are not pruned by default (as in tfmot)"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a mismatch warns here; the asserts below decide
        # Full int8 or to_tflite raises. QAT: its own strict validation, and again here in LiteRT
        # (a broken scale gives 0-3 dB, tests/convert).
        qat, qat_file = coverage.run_qat(model, x, on_mismatch="warn")
        measured = coverage.compare(qat, qat_file, x)
        assert (qat_file.report.passed and _agrees(measured, 12.0, 0.85)) == ("qat" not in known), measured

        # Post-training int8 of a briefly trained network: near-ties flip more often than after real
        # training, so the file is held to looser figures than kopt's 95% default.
        ptq_file = coverage.run_ptq(model, x, on_mismatch="warn")
    measured = coverage.compare(model, ptq_file, x)
    assert _agrees(measured, 12.0, 0.75) == ("ptq" not in known), measured
    assert len(ptq_file) < 0.4 * 4 * model.count_params()  # int8 weights: ~1/4 of float32, plus metadata
