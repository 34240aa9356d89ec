"""What kopt's layers do inside a `tf.distribute` replica step: loss scaling and cross-replica ranges."""

import contextlib
import threading

# Keras divides every loss by the number of replicas in sync before the replicas' gradients are summed
# (`keras.losses.Loss.__call__` and the regularization losses do it). A loss computed with plain ops, as a
# distillation loss is, must be scaled the same way or its gradient counts once per replica. The function
# that does it is not exported (keras.src.losses.loss.scale_loss_for_distribution); wrapped here, once.
from keras.src.losses.loss import scale_loss_for_distribution as _scale

# Replica steps of MirroredStrategy run in threads: the flag below is per thread.
_state = threading.local()


def scale_loss_for_distribution(value):
    """`value / num_replicas_in_sync` inside a `tf.distribute` replica context, else `value`."""
    return _scale(value)


@contextlib.contextmanager
def same_on_every_replica():
    """Inside: the values being measured are identical on every replica (e.g. computed from mirrored
    weights), so `cross_replica_range` needs no collective."""
    previous = getattr(_state, "same", False)
    _state.same = True
    try:
        yield
    finally:
        _state.same = previous


def cross_replica_range(low, high):
    """`(min over replicas of low, max over replicas of high)` inside a replica step, else `(low, high)`.

    This is the range one device would measure on the whole global batch. It costs one all-gather
    (of both ends at once), and none inside `same_on_every_replica()` or without a strategy.
    """
    import tensorflow as tf  # kopt's distribution is tf.distribute (the TensorFlow backend)

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1 or getattr(_state, "same", False):
        return low, high
    ends = tf.stop_gradient(tf.stack([-tf.convert_to_tensor(low), tf.convert_to_tensor(high)]))
    widest = tf.reduce_max(context.all_gather(ends[None], axis=0), axis=0)
    return -widest[0], widest[1]
