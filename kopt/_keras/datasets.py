"""What a `tf.data` pipeline does from one epoch to the next: ops that make it yield different data."""

import tensorflow as tf

# Ops that read data kopt cannot inspect: it may differ from one epoch to the next.
_OPAQUE_OPS = {"GeneratorDataset", "PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _nodes(dataset):
    # The only way to read a pipeline's ops is its serialized graph; `Dataset._as_serialized_graph` is
    # private tf.data API (there is no public equivalent), wrapped here once.
    graph_def = tf.compat.v1.GraphDef()
    serialized = dataset._as_serialized_graph(external_state_policy=tf.data.experimental.ExternalStatePolicy.WARN)
    graph_def.ParseFromString(serialized.numpy())
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def epoch_variations(dataset):
    """Reasons why `dataset` may not yield the same elements, in the same order, every epoch.

    Random ops of any kind (also stateless ones, whose seeds may change), `shuffle` with
    `reshuffle_each_iteration=True`, maps or interleaves with `deterministic=False`, and Python
    generators or `py_function`s (kopt cannot see what they yield).

    Args:
        dataset: a `tf.data.Dataset`.

    Returns:
        A sorted list of human-readable reasons; empty if every epoch is the same.

    Example:

    ```python
    import tensorflow as tf
    from kopt._keras.datasets import epoch_variations
    epoch_variations(tf.data.Dataset.range(8).shuffle(8))  # ['shuffle(...) reorders ...']
    ```
    """
    reasons = set()
    for node in _nodes(dataset):
        op = node.op
        if "Shuffle" in op and op.endswith("Dataset") or op.startswith("ShuffleDataset"):
            reshuffle = node.attr.get("reshuffle_each_iteration")
            if reshuffle is None or reshuffle.b:
                reasons.add("shuffle(...) reorders the samples every epoch (reshuffle_each_iteration=True)")
        elif "Random" in op or op in ("Multinomial", "StatelessMultinomial"):
            reasons.add(f"random op {op} (e.g. augmentation)")
        elif op in _OPAQUE_OPS:
            reasons.add(f"{op} (a Python generator or py_function: kopt cannot tell what it yields)")
        elif node.attr.get("deterministic") is not None and node.attr["deterministic"].s == b"false":
            reasons.add(f"{op} with deterministic=False (the order of the samples may change)")
    return sorted(reasons)
