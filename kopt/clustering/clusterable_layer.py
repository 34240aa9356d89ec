"""`ClusterableLayer`: how a custom layer tells kopt which weights to cluster (tfmot's interface)."""

import abc


class ClusterableLayer(abc.ABC):
    """Mixin for custom layers whose weights `cluster_weights` should cluster (tfmot's `ClusterableLayer`).

    Implement `get_clusterable_weights()` to return `[(name, variable)]`. A custom layer that does not is
    clustered through the Dense, Conv, Embedding ... layers it holds as attributes, as kopt's pruning does.

    Example:

    ```python
    class MyDense(keras.layers.Dense, kopt.clustering.ClusterableLayer):
        def get_clusterable_weights(self):
            return [("kernel", self.kernel)]

    layer = kopt.clustering.cluster_weights(MyDense(4), number_of_clusters=4)
    ```
    """

    @abc.abstractmethod
    def get_clusterable_weights(self):
        """Returns `[(name, variable)]`: the weights to cluster, each with a name unique within the layer."""
        raise NotImplementedError("ClusterableLayer subclasses must implement get_clusterable_weights().")

    def get_clusterable_algorithm(self, weight_name):  # noqa: ARG002 - tfmot's signature
        """Returns a `ClusteringAlgorithm` subclass for the weight named `weight_name`, or None for the default."""
        return None
