"""Cross-replica ranges: the widest over the replicas inside a replica step, local where values are the same."""

import numpy as np
import tensorflow as tf

from kopt._keras.distribution import cross_replica_range, same_on_every_replica


def _per_replica_ranges(strategy, same):
    lows = tf.constant([[-1.0, -5.0], [-3.0, -2.0]])  # replica r sees row r
    highs = tf.constant([[4.0, 1.0], [2.0, 6.0]])

    @tf.function
    def step():
        r = tf.distribute.get_replica_context().replica_id_in_sync_group
        if same:
            with same_on_every_replica():
                return cross_replica_range(lows[r], highs[r])
        return cross_replica_range(lows[r], highs[r])

    result = strategy.run(step)
    return [[t.numpy() for t in strategy.experimental_local_results(part)] for part in result]


def test_replicas_get_the_widest_range_of_all_replicas():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    (low0, low1), (high0, high1) = _per_replica_ranges(strategy, same=False)
    for low, high in ((low0, high0), (low1, high1)):  # element-wise over channels, as one device over the batch
        np.testing.assert_array_equal(low, [-3.0, -5.0])
        np.testing.assert_array_equal(high, [4.0, 6.0])
    (low0, low1), (high0, high1) = _per_replica_ranges(strategy, same=True)
    np.testing.assert_array_equal(low0, [-1.0, -5.0])  # no collective: each replica keeps its own
    np.testing.assert_array_equal(low1, [-3.0, -2.0])


def test_without_a_strategy_the_range_is_unchanged():
    low, high = cross_replica_range(tf.constant(-1.0), tf.constant(2.0))
    assert (float(low), float(high)) == (-1.0, 2.0)
