"""Pruning under tf.distribute.MirroredStrategy on 2 logical CPU devices (set up in conftest)."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kopt import sparsity
from kopt.demo import build_cnn


def _train(strategy, initial_weights, x, y):
    with strategy.scope():
        model = build_cnn()
        model.set_weights(initial_weights)
        pruned = sparsity.prune_low_magnitude(
            model, pruning_schedule=sparsity.PolynomialDecay(0.0, 0.7, begin_step=0, end_step=20, frequency=4)
        )
        pruned.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    return pruned


def test_mirrored_strategy_matches_one_device():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    rng = np.random.default_rng(0)
    x = rng.random((256, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 256)
    initial = build_cnn().get_weights()

    # Not the default collective all-reduce: two of those in one process (another test's) clash on instance keys.
    mirrored = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert mirrored.num_replicas_in_sync == 2
    distributed = _train(mirrored, initial, x, y)
    single = _train(tf.distribute.OneDeviceStrategy(devices[0]), initial, x, y)

    wrappers = [layer for layer in distributed.layers if isinstance(layer, sparsity.PruneLowMagnitude)]
    assert len(wrappers) == 4
    for layer in wrappers:
        # Every replica holds the same mask and step.
        for variable in layer.masks + [layer.pruning_step]:
            replicas = [v.numpy() for v in variable.value.values]
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0], replicas[1])
        assert int(ops.convert_to_numpy(layer.pruning_step)) == 24  # 8 steps x 3 epochs

    for d_layer, s_layer in zip(distributed.layers, single.layers):
        if isinstance(d_layer, sparsity.PruneLowMagnitude):
            for d_mask, s_mask in zip(d_layer.masks, s_layer.masks):
                np.testing.assert_array_equal(ops.convert_to_numpy(d_mask), ops.convert_to_numpy(s_mask))
    for d_w, s_w in zip(distributed.get_weights(), single.get_weights()):
        np.testing.assert_allclose(d_w, s_w, atol=1e-4)
    stripped = sparsity.get_sparsity(sparsity.strip_pruning(distributed))
    assert all(abs(v - 0.7) < 0.01 for v in stripped.values()), stripped
