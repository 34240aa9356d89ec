"""PruningSummaries writes the sparsity and threshold of every pruned weight to TensorBoard, with tfmot's tags."""

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


def test_pruning_summaries_log_tfmot_tags(tmp_path):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(3, name="b")])
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.75, 0, frequency=2))
    pruned.compile("adam", "mse")
    x, y = np.random.rand(40, 12).astype("float32"), np.random.rand(40, 3).astype("float32")
    pruned.fit(x, y, batch_size=10, epochs=2, verbose=0,
               callbacks=[sparsity.UpdatePruningStep(), sparsity.PruningSummaries(log_dir=str(tmp_path))])
    scalars = _read_scalars(tmp_path / "metrics")
    # tfmot's tags: "<mask variable name>/sparsity" and "<threshold variable name>/threshold".
    assert set(scalars) == {
        "prune_low_magnitude_a/mask:0/sparsity", "prune_low_magnitude_a/threshold:0/threshold",
        "prune_low_magnitude_b/mask:0/sparsity", "prune_low_magnitude_b/threshold:0/threshold", "pruning_step"}
    # At the start of each epoch (as tfmot) and at the end of training, at the optimizer's step.
    assert [s for s, _ in scalars["pruning_step"]] == [0, 4, 8]
    assert [v for _, v in scalars["pruning_step"]] == [0.0, 4.0, 8.0]
    sparsity_a = scalars["prune_low_magnitude_a/mask:0/sparsity"]
    assert sparsity_a[0][1] == 0.0 and sparsity_a[-1][1] == pytest.approx(0.75)
    thresholds = scalars["prune_low_magnitude_a/threshold:0/threshold"]
    assert thresholds[0][1] == 0.0 and thresholds[-1][1] > 0.0
    assert thresholds[-1][1] == pytest.approx(float(keras.ops.convert_to_numpy(pruned.layers[0].thresholds[0])))
    assert (tmp_path / "train").exists()  # the usual TensorBoard logs are still written


def test_pruning_summaries_number_several_weights_of_one_layer(tmp_path):
    class PrunedBias(keras.layers.Dense, sparsity.PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel, self.bias]

    pruned = keras.Sequential([keras.Input((6,)), sparsity.prune_low_magnitude(PrunedBias(4, name="d"))])
    pruned.compile("sgd", "mse")
    pruned.fit(np.ones((8, 6)), np.ones((8, 4)), epochs=1, verbose=0,
               callbacks=[sparsity.UpdatePruningStep(), sparsity.PruningSummaries(log_dir=str(tmp_path))])
    tags = set(_read_scalars(tmp_path / "metrics"))
    assert {"prune_low_magnitude_d/mask:0/sparsity", "prune_low_magnitude_d/mask_1:0/sparsity",
            "prune_low_magnitude_d/threshold_1:0/threshold"} <= tags


def test_pruning_summaries_needs_a_log_dir():
    with pytest.raises(ValueError, match="log_dir"):
        sparsity.PruningSummaries(log_dir="")
