"""`MultiWorkerMirroredStrategy` that Keras 3's `fit`/`evaluate` can use (keras#20585, tensorflow#72388).

Plain Keras 3.15 + TF 2.21 `fit` under `tf.distribute.MultiWorkerMirroredStrategy` fails with
`ValueError: Attempt to convert a value (PerReplica:{...}) to a Tensor`. Measured causes, both in how Keras calls
`Strategy.reduce` (keras/src/backend/tensorflow/trainer.py):

1. Before the first step, `_maybe_symbolic_build` reduces the whole `(x, y)` batch structure with one
   `strategy.reduce("MEAN", batch, axis=None)`. `MirroredStrategy` accepts a structure; the collective
   (multi-worker) implementation converts it to one tensor and fails.
2. Every step, `reduce_per_replica` reduces scalar metrics with `strategy.reduce("MEAN", v, axis=0)`, and axis 0
   does not exist on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions").

The subclass below reduces structures element by element and scalars across replicas only. Everything else is
TensorFlow's strategy as it is.
"""

import tensorflow as tf


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`tf.distribute.MultiWorkerMirroredStrategy` whose `reduce` takes what Keras 3's trainer passes it.

    Use it like its parent (`kopt.distribute.get_strategy()` returns it when `TF_CONFIG` names several workers).

    Example:

    ```python
    # In each worker process, with TF_CONFIG set for the cluster:
    # strategy = kopt.distribute.KerasMultiWorkerMirroredStrategy()
    # with strategy.scope():
    #     model = build_and_compile()
    # model.fit(dataset)
    ```
    """

    def reduce(self, reduce_op, value, axis=None):
        def reduce_one(item):
            local = self.experimental_local_results(item)[0]
            rank = getattr(getattr(local, "shape", None), "rank", None)
            return super(KerasMultiWorkerMirroredStrategy, self).reduce(
                reduce_op, item, None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)
