"""Clustering under tf.distribute.MirroredStrategy on 2 logical CPU devices (set up in conftest)."""

import keras
import numpy as np
import tensorflow as tf

from kopt import clustering
from kopt.demo import build_cnn



def _train(strategy, initial_weights, x, y):
    with strategy.scope():
        model = build_cnn()
        model.set_weights(initial_weights)
        clustered = clustering.experimental.cluster_weights(model, 8, "linear", preserve_sparsity=True)
        clustered.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.cluster_centroids[0].numpy() for w in clustered.layers if isinstance(w, clustering.ClusterWeights)]
    # One step of the whole batch: compared exactly below. (Over more steps a weight halfway between two centroids
    # can join either one after float rounding differences, and the runs part.)
    clustered.fit(x, y, batch_size=256, epochs=1, shuffle=False, verbose=0)
    return clustered, before


def test_mirrored_strategy_matches_one_device():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    rng = np.random.default_rng(0)
    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 256)
    keras.utils.set_random_seed(0)
    initial = build_cnn().get_weights()

    mirrored = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    distributed, before = _train(mirrored, initial, x, y)
    single, _ = _train(tf.distribute.OneDeviceStrategy(devices[0]), initial, x, y)

    wrappers = [layer for layer in distributed.layers if isinstance(layer, clustering.ClusterWeights)]
    assert len(wrappers) == 4
    for layer, start in zip(wrappers, before):
        centroids = layer.cluster_centroids[0]
        replicas = [v.numpy() for v in centroids.value.values]
        np.testing.assert_array_equal(replicas[0], replicas[1])  # the same on both replicas
        assert not np.allclose(centroids.numpy(), start)  # and trained
    for d_w, s_w in zip(distributed.get_weights(), single.get_weights()):
        np.testing.assert_allclose(d_w, s_w, atol=1e-4)
    distributed.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)  # more steps: replicas stay in sync
    for layer in wrappers:
        replicas = [v.numpy() for v in layer.cluster_centroids[0].value.values]
        np.testing.assert_array_equal(replicas[0], replicas[1])
    stripped = clustering.strip_clustering(distributed)
    assert max(len(np.unique(layer.kernel.numpy())) for layer in stripped.layers if hasattr(layer, "kernel")) <= 8
