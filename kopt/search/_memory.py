"""Frees what TensorFlow keeps of the functions traced during one trial, so that a search's memory stays flat.

Keras's TensorFlow optimizer sums gradients with the strategy's `all_reduce`, a `tf.custom_gradient`. Traced in
graph mode, a custom gradient registers its gradient function in TensorFlow's global gradient registry under a fresh
name ("CustomGradient-<n>") and never removes it (tensorflow/tensorflow#27492, #97697). That function holds tensors
of the traced `train_function`, hence its whole graph and the functions the graph registered in the eager context:
`keras.backend.clear_session()` and `gc.collect()` free the model, never its traces.
"""

import contextlib
import gc

import keras

_PREFIX = "CustomGradient-"


def _gradient_registry():
    """TensorFlow's registry of gradient functions by op name (a dict), or None if TensorFlow hides it."""
    try:
        from tensorflow.python.framework import ops
    except ImportError:  # pragma: no cover (a TensorFlow without this module: nothing to free)
        return None
    registry = getattr(getattr(ops, "gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


@contextlib.contextmanager
def released_traces():
    """Runs a block, then frees every traced function the block left behind.

    On exit (also on an error), `keras.backend.clear_session()` runs, the custom
    gradients registered inside the block are removed from TensorFlow's gradient
    registry, and `gc.collect()` frees the graphs they held. Models and functions
    made inside the block must not be used after it: differentiating a graph
    traced inside the block would no longer find its custom gradient.

    Example:

    ```python
    from kopt.search._memory import released_traces

    with released_traces():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("adam", "mse")
        model.fit(np.zeros((8, 4)), np.zeros((8, 2)), verbose=0)
    ```
    """
    registry = _gradient_registry()
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        keras.backend.clear_session()
        if registry is not None:
            for name in [n for n in registry if n not in before and str(n).startswith(_PREFIX)]:
                registry.pop(name, None)
        gc.collect()
