"""Masks after one pruning step: identical to tfmot's for identical weights in an identical tf_keras model."""

import keras
import numpy as np
import pytest

from kopt import sparsity
from tests.oracle.run import run_oracle

# kind, kernel shape, input shape, sparsity, block size, pooling, m_by_n ((0, 0) = none)
CASES = [
    ("dense", (64, 32), (64,), 0.5, (1, 1), "AVG", (0, 0)),
    ("dense", (64, 32), (64,), 0.8, (1, 1), "AVG", (0, 0)),
    ("dense", (37, 19), (37,), 0.33, (1, 1), "AVG", (0, 0)),
    ("dense", (64, 32), (64,), 0.9, (1, 1), "AVG", (0, 0)),
    ("conv2d", (3, 3, 8, 16), (10, 10, 8), 0.5, (1, 1), "AVG", (0, 0)),
    ("conv2d", (5, 5, 4, 6), (9, 9, 4), 0.75, (1, 1), "AVG", (0, 0)),
    ("dense", (64, 32), (64,), 0.5, (2, 2), "AVG", (0, 0)),
    ("dense", (64, 32), (64,), 0.6, (4, 1), "MAX", (0, 0)),
    ("dense", (48, 32), (48,), 0.7, (1, 8), "AVG", (0, 0)),
    ("dense", (20, 20), (20,), 0.5, (1, 16), "AVG", (0, 0)),  # partial blocks: tfmot pads
    ("dense", (21, 13), (21,), 0.6, (4, 3), "MAX", (0, 0)),
    ("dense", (64, 32), (64,), 0.5, (1, 1), "AVG", (2, 4)),
    ("dense", (32, 24), (32,), 0.5, (1, 1), "AVG", (1, 4)),
    ("conv2d", (3, 3, 8, 16), (10, 10, 8), 0.5, (1, 1), "AVG", (2, 4)),
]


def _kopt_mask(kind, kernel, input_shape, target, block, pooling, m_by_n, x):
    layer = keras.layers.Dense(kernel.shape[1], use_bias=False) if kind == "dense" else keras.layers.Conv2D(
        kernel.shape[3], kernel.shape[:2], use_bias=False
    )
    model = keras.Sequential([keras.Input(input_shape), layer])
    layer.set_weights([kernel])
    pruned = sparsity.prune_low_magnitude(
        model,
        pruning_schedule=sparsity.ConstantSparsity(target, 0, frequency=1),
        block_size=block,
        block_pooling_type=pooling,
        sparsity_m_by_n=None if m_by_n == (0, 0) else m_by_n,
    )
    pruned.compile(keras.optimizers.SGD(0.0), "mse")
    y = pruned.predict(x, verbose=0)
    pruned.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    return keras.ops.convert_to_numpy(pruned.layers[0].masks[0])


@pytest.fixture(scope="module")
def oracle_masks(tmp_path_factory):
    rng = np.random.default_rng(3)
    data = {"n_cases": len(CASES)}
    for i, (kind, kshape, ishape, target, block, pooling, m_by_n) in enumerate(CASES):
        data.update({
            f"kind_{i}": kind, f"kernel_{i}": rng.normal(size=kshape).astype("float32"),
            f"input_shape_{i}": np.array(ishape), f"sparsity_{i}": target, f"block_{i}": np.array(block),
            f"pooling_{i}": pooling, f"m_by_n_{i}": np.array(m_by_n),
            f"x_{i}": rng.normal(size=(4, *ishape)).astype("float32"),
        })
    tmp = tmp_path_factory.mktemp("masks")
    np.savez(tmp / "in.npz", **data)
    return data, run_oracle("masks", tmp / "in.npz", tmp / "out.npz")


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c[0]}-{c[3]}-{c[4]}-{c[5]}-{c[6]}" for c in CASES])
def test_mask_matches_tfmot(oracle_masks, i):
    data, expected = oracle_masks
    kind, _, ishape, target, block, pooling, m_by_n = CASES[i]
    mask = _kopt_mask(kind, data[f"kernel_{i}"], ishape, target, block, pooling, m_by_n, data[f"x_{i}"])
    reference = expected[f"mask_{i}"]
    assert mask.shape == reference.shape
    assert 0.0 < reference.mean() < 1.0  # tfmot really pruned something
    np.testing.assert_array_equal(mask, reference)
