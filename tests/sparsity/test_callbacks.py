"""PruningSummaries writes the sparsity of every pruned weight and the step to TensorBoard."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kopt import sparsity


def _read_scalars(directory):
    scalars = {}
    for path in tf.io.gfile.glob(f"{directory}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return scalars


def test_pruning_summaries_log_sparsity_and_step(tmp_path):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, name="b")])
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.75, 0, frequency=2))
    pruned.compile("adam", "mse")
    x, y = np.random.rand(40, 12).astype("float32"), np.random.rand(40, 3).astype("float32")
    pruned.fit(x, y, batch_size=10, epochs=2, verbose=0,
               callbacks=[sparsity.UpdatePruningStep(), sparsity.PruningSummaries(log_dir=str(tmp_path))])
    scalars = _read_scalars(tmp_path / "metrics")
    assert set(scalars) == {"a/kernel/sparsity", "b/kernel/sparsity", "pruning_step"}
    assert [v for _, v in scalars["pruning_step"]] == [4.0, 8.0]
    assert scalars["a/kernel/sparsity"][-1][1] == pytest.approx(0.75)
    assert (tmp_path / "train").exists()  # the usual TensorBoard logs are still written


def test_pruning_summaries_needs_a_log_dir():
    with pytest.raises(ValueError, match="log_dir"):
        sparsity.PruningSummaries(log_dir="")
