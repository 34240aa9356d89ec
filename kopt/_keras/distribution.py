"""Loss scaling under `tf.distribute`, as Keras's own losses do it."""

# Keras divides every loss by the number of replicas in sync before the replicas' gradients are summed
# (`keras.losses.Loss.__call__` and the regularization losses do it). A loss computed with plain ops, as a
# distillation loss is, must be scaled the same way or its gradient counts once per replica. The function
# that does it is not exported (keras.src.losses.loss.scale_loss_for_distribution); wrapped here, once.
from keras.src.losses.loss import scale_loss_for_distribution as _scale


def scale_loss_for_distribution(value):
    """`value / num_replicas_in_sync` inside a `tf.distribute` replica context, else `value`."""
    return _scale(value)
