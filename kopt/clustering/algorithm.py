"""`ClusteringAlgorithm`: which centroid each weight takes, and the clustered weight with tfmot's gradients."""

from keras import ops

from kopt.clustering.cluster_config import GradientAggregation


class ClusteringAlgorithm:
    """Assigns weights to their nearest centroid and gathers the clustered weight (tfmot's `ClusteringAlgorithm`).

    The gradients are tfmot's:
    - each centroid receives the sum of the gradients of the weights that take its value (`SUM`), or their mean
      (`AVG`);
    - the original weights receive the clustered weight's gradient unchanged (a straight-through estimator), so
      they keep training and may move to another cluster.

    A `ClusterableLayer` may return a subclass from `get_clusterable_algorithm` to change the assignment
    (override `get_pulling_indices`).

    Args:
        clusters_centroids: the centroids: shape `(k,)`, or `(channels, k)` for `PerChannelClusteringAlgorithm`.
        cluster_gradient_aggregation: a `GradientAggregation`.
        data_format: unused (tfmot's signature); kernels are laid out channels-last in Keras 3.

    Example:

    ```python
    import numpy as np
    algorithm = kopt.clustering.ClusteringAlgorithm(np.array([-1.0, 0.0, 1.0], "float32"))
    weight = np.array([[-0.8, 0.1], [0.7, 2.0]], "float32")
    indices = algorithm.get_pulling_indices(weight)
    clustered = algorithm.get_clustered_weight(indices, weight)
    assert np.array_equal(keras.ops.convert_to_numpy(clustered), [[-1.0, 0.0], [1.0, 1.0]])
    ```
    """

    def __init__(self, clusters_centroids, cluster_gradient_aggregation=GradientAggregation.SUM, data_format=None):
        self.cluster_centroids = clusters_centroids
        self.cluster_gradient_aggregation = GradientAggregation(cluster_gradient_aggregation)
        self.data_format = data_format

    def get_pulling_indices(self, weight, centroids=None):
        """The index of the nearest centroid for each element of `weight` (the first one on a tie)."""
        centroids = self.cluster_centroids if centroids is None else centroids
        return ops.argmin(ops.abs(ops.expand_dims(weight, -1) - centroids), axis=-1)

    def _gather(self, centroids, pulling_indices):
        return ops.take(centroids, pulling_indices)

    def _centroids_for_gradient(self, pulling_indices):
        centroids = ops.convert_to_tensor(self.cluster_centroids)
        if self.cluster_gradient_aggregation is GradientAggregation.SUM:
            return centroids
        # AVG: the same values, with each centroid's gradient divided by its cluster's size (0 for an empty one).
        k = centroids.shape[-1]
        members = ops.sum(ops.one_hot(ops.reshape(self._flat_indices(pulling_indices, k), [-1]),
                                      int(ops.size(centroids)), dtype=centroids.dtype), axis=0)
        inverse = ops.where(members > 0, 1.0 / ops.maximum(members, 1.0), 0.0)
        flat = ops.reshape(centroids, [-1])
        flat = ops.stop_gradient(flat) + (flat - ops.stop_gradient(flat)) * ops.stop_gradient(inverse)
        return ops.reshape(flat, centroids.shape)

    def _flat_indices(self, pulling_indices, k):
        return pulling_indices

    def get_clustered_weight(self, pulling_indices, original_weight):
        """Each weight replaced by its centroid; gradients flow to the centroids and, unchanged, to the weights."""
        centroids = self._centroids_for_gradient(pulling_indices)
        clustered = self._gather(centroids, pulling_indices)
        original = ops.convert_to_tensor(original_weight)
        return clustered + (original - ops.stop_gradient(original))


class PerChannelClusteringAlgorithm(ClusteringAlgorithm):
    """Clusters each output channel (the last axis of a kernel) with its own centroids, shape `(channels, k)`.

    tfmot's per-channel clustering of Conv2D kernels (`cluster_per_channel=True`): with per-channel int8 weights each
    channel then has at most k int8 values.

    Example:

    ```python
    import numpy as np
    centroids = np.array([[0.0, 1.0], [10.0, 20.0]], "float32")
    algorithm = kopt.clustering.PerChannelClusteringAlgorithm(centroids)
    weight = np.array([[0.2, 12.0], [0.9, 19.0]], "float32")
    clustered = algorithm.get_clustered_weight(algorithm.get_pulling_indices(weight), weight)
    assert np.array_equal(keras.ops.convert_to_numpy(clustered), [[0.0, 10.0], [1.0, 20.0]])
    ```
    """

    def _flat_indices(self, pulling_indices, k):
        channels = pulling_indices.shape[-1]
        return pulling_indices + ops.arange(channels, dtype=pulling_indices.dtype) * k

    def _gather(self, centroids, pulling_indices):
        k = centroids.shape[-1]
        return ops.take(ops.reshape(centroids, [-1]), self._flat_indices(pulling_indices, k))
