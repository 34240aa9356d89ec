"""tfmot's `clustering.keras.experimental`: `cluster_weights` with `preserve_sparsity` and `cluster_per_channel`.

Example:

```python
pruned = kopt.sparsity.strip_pruning(pruned_model)
clustered = kopt.clustering.experimental.cluster_weights(pruned, number_of_clusters=8, preserve_sparsity=True)
```
"""

from kopt.clustering.cluster_config import CentroidInitialization


def cluster_weights(to_cluster, number_of_clusters, cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
                    preserve_sparsity=False, cluster_per_channel=False, **kwargs):
    """`kopt.clustering.cluster_weights` with tfmot's experimental options (sparsity-preserving clustering).

    Args:
        to_cluster: a `keras.layers.Layer`, a list of layers, or a `keras.Model`.
        number_of_clusters: distinct values per clustered weight (at least 3 with `preserve_sparsity`).
        cluster_centroids_init: a `CentroidInitialization` (k-means++ by default).
        preserve_sparsity: keep a pruned model's zeros: one centroid is exactly 0 and the weights nearest to it at
            the start stay zero through training (the others share the remaining centroids by sign).
        cluster_per_channel: Conv2D kernels get `number_of_clusters` centroids per output channel, which suits
            per-channel int8 quantization afterwards.
        **kwargs: as in `kopt.clustering.cluster_weights`.

    Returns:
        The wrapped layer, list of layers, or a new (uncompiled) model.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    clustered = kopt.clustering.experimental.cluster_weights(model, number_of_clusters=8, preserve_sparsity=True)
    ```
    """
    from kopt.clustering.cluster import cluster_weights as _cluster_weights

    return _cluster_weights(to_cluster, number_of_clusters, cluster_centroids_init,
                            preserve_sparsity=preserve_sparsity, cluster_per_channel=cluster_per_channel, **kwargs)


__all__ = ["cluster_weights"]
