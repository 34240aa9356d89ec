"""`cluster_scope`: tfmot's context manager for loading clustered models."""

from kopt._keras.scope import custom_object_scope
from kopt.clustering.wrapper import ClusterWeights


def cluster_scope(*args):
    """A scope in which clustered models load (tfmot's `cluster_scope`).

    kopt's classes are registered with Keras, so `.keras` files of clustered models load without it; it is there
    so tfmot code runs unchanged, and to make your own classes (e.g. a `ClusterableLayer` subclass) available while
    loading.

    Args:
        *args: dicts `{name: class}` of extra objects to make available (tfmot's `cluster_scope` takes none).

    Returns:
        A `keras.saving.custom_object_scope` to use in a `with` statement.

    Example:

    ```python
    clustered.save("clustered.keras")
    with kopt.clustering.cluster_scope():
        loaded = keras.models.load_model("clustered.keras")
    ```
    """
    return custom_object_scope("cluster_scope", (ClusterWeights,), args, "cluster_scope({'MyLayer': MyLayer})")
