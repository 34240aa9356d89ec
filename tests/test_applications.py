"""Every `keras.applications` family through prune, QAT int8 and post-training int8 (issue 6).

The smallest member of each family (benchmarks/coverage.py builds them: weights=None, small inputs,
logits out, BatchNormalization statistics set from a batch). Each .tflite file is run in LiteRT's
interpreter here and compared with the Keras model it came from; pruning is checked on the stripped
weights themselves.
"""

import pathlib
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import coverage  # noqa: E402

L = keras.layers


def _kernels(model):
    from kopt._keras.clone import walk_layers

    for layer in walk_layers(model):
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.Dense, L.SeparableConv2D)) and layer.built:
            kernel = layer.pointwise_kernel if isinstance(layer, L.SeparableConv2D) else layer.kernel
            yield layer, keras.ops.convert_to_numpy(kernel)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(coverage.SPECS))
def test_family_prunes_quantizes_and_converts(name):
    model, x = coverage.build(name, samples=16)

    stripped = coverage.run_prune(model, x, sparsity=0.5)
    kernels = list(_kernels(stripped))
    assert kernels
    for layer, kernel in kernels:
        zeros = float(np.mean(kernel == 0))
        if isinstance(layer, L.DepthwiseConv2D):
            assert zeros < 0.05, f"{layer.name}: depthwise kernels are not pruned by default (as in tfmot)"
        else:
            assert abs(zeros - 0.5) <= max(0.01, 1 / kernel.size), f"{layer.name}: {zeros:.3f} zeros"

    qat, qat_file = coverage.run_qat(model, x)
    measured = coverage.compare(qat, qat_file, x)
    assert measured["sqnr_db"] >= 25.0, measured
    assert measured["top1"] is None or measured["top1"] >= 0.9, measured

    ptq_file = coverage.run_ptq(model, x)
    measured = coverage.compare(model, ptq_file, x)
    assert measured["sqnr_db"] >= 12.0, measured
    assert measured["top1"] is None or measured["top1"] >= 0.75, measured
    assert len(ptq_file) < 0.35 * len(kopt_float(model))


def kopt_float(model):
    import kopt

    return kopt.convert.to_tflite(model, quantization=None, validate=False)
