"""`ClusterWeights`: the layer wrapper that clusters a layer's weights during training (tfmot's wrapper)."""

import numbers

import keras
import numpy as np
from keras import ops

from kopt._keras.value_wrapper import ValueWrapper
from kopt.clustering._centroids import initial_centroids
from kopt.clustering._registry import REGISTRY
from kopt.clustering.algorithm import ClusteringAlgorithm, PerChannelClusteringAlgorithm
from kopt.clustering.cluster_config import CentroidInitialization, GradientAggregation


def validate_clustering_params(number_of_clusters, cluster_centroids_init, preserve_sparsity, cluster_per_channel,
                               cluster_gradient_aggregation=GradientAggregation.SUM):
    """Checks the clustering arguments shared by `cluster_weights` and the wrapper; returns them normalized."""
    if (not isinstance(number_of_clusters, numbers.Integral) or isinstance(number_of_clusters, bool)):
        raise ValueError(f"`number_of_clusters` must be an integer, e.g. number_of_clusters=16; got "
                         f"{number_of_clusters!r}.")
    least = 3 if preserve_sparsity else 2
    if number_of_clusters < least:
        raise ValueError(
            f"`number_of_clusters` must be at least {least}"
            + (" with preserve_sparsity=True (one cluster is kept for the zeros)" if preserve_sparsity else "")
            + f"; got {number_of_clusters}.")
    try:
        cluster_centroids_init = CentroidInitialization(cluster_centroids_init)
    except ValueError:
        raise ValueError(
            f"`cluster_centroids_init`={cluster_centroids_init!r} is not a CentroidInitialization: use one of "
            + ", ".join(f"CentroidInitialization.{m.name}" for m in CentroidInitialization) + ".") from None
    try:
        cluster_gradient_aggregation = GradientAggregation(cluster_gradient_aggregation)
    except ValueError:
        raise ValueError(f"`cluster_gradient_aggregation`={cluster_gradient_aggregation!r} must be "
                         "GradientAggregation.SUM or GradientAggregation.AVG.") from None
    for name, value in (("preserve_sparsity", preserve_sparsity), ("cluster_per_channel", cluster_per_channel)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {value!r}.")
    return (int(number_of_clusters), cluster_centroids_init, preserve_sparsity, cluster_per_channel,
            cluster_gradient_aggregation)


@keras.saving.register_keras_serializable(package="kopt")
class ClusterWeights(ValueWrapper):
    """Wraps a layer so that each of its kernels takes at most `number_of_clusters` distinct values.

    tfmot's `ClusterWeights`. For each clustered weight the wrapper holds the centroids as a trainable weight. In
    every call each weight element takes the value of its nearest centroid (recomputed from the current weights);
    the centroids train on the sum of their members' gradients, and the original weights keep training through a
    straight-through estimator, so a weight can move to another cluster. State lives in weights: the centroids, and
    with `preserve_sparsity` the 0/1 mask of the weights that stay zero, so `.keras` files, checkpoints and
    `tf.distribute` carry it. Use `cluster_weights` rather than this class directly.

    Args:
        layer: the layer to cluster: Dense, EinsumDense, Conv*, Conv*Transpose, SeparableConv* (pointwise kernel),
            Embedding, MultiHeadAttention, LSTM/GRU/SimpleRNN, a `ClusterableLayer`, or a custom layer holding such
            layers.
        number_of_clusters: the number of centroids per weight (per channel with `cluster_per_channel`).
        cluster_centroids_init: a `CentroidInitialization` (k-means++ by default, as tfmot).
        preserve_sparsity: keep the zeros: the weights nearest to the zero centroid are masked to zero once, at
            build, and that centroid stays exactly 0.
        cluster_per_channel: Conv2D kernels get centroids per output channel (ignored for other layers, as tfmot).
        cluster_gradient_aggregation: `GradientAggregation.SUM` (default) or `AVG`.
        **kwargs: passed to `keras.layers.Wrapper` (e.g. `name`).

    Example:

    ```python
    layer = kopt.clustering.ClusterWeights(keras.layers.Dense(8), number_of_clusters=4)
    ```
    """

    def __init__(self, layer, number_of_clusters, cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
                 preserve_sparsity=False, cluster_per_channel=False,
                 cluster_gradient_aggregation=GradientAggregation.SUM, **kwargs):
        if not isinstance(layer, keras.layers.Layer):
            raise ValueError(f"`layer` must be a keras.layers.Layer, got {type(layer).__name__}: {layer!r}.")
        if isinstance(layer, ClusterWeights):
            raise ValueError(f"Layer '{layer.name}' is already clustered (a ClusterWeights wrapper): use it as it "
                             "is, or strip_clustering() first.")
        if layer.built and not REGISTRY.is_supported(layer) or not layer.built and not REGISTRY.is_builtin(layer):
            raise ValueError(
                f"Layer '{layer.name}' ({layer.__class__.__name__}) cannot be clustered: kopt clusters the kernels "
                "of Dense, EinsumDense, Conv*, SeparableConv*, Embedding, MultiHeadAttention and LSTM/GRU/SimpleRNN "
                "layers, of custom layers holding them (built), and of a ClusterableLayer. For another custom "
                "layer, subclass kopt.clustering.ClusterableLayer and return [(name, variable)] from "
                "get_clusterable_weights().")
        (self.number_of_clusters, self.cluster_centroids_init, self.preserve_sparsity, self.cluster_per_channel,
         self.cluster_gradient_aggregation) = validate_clustering_params(
            number_of_clusters, cluster_centroids_init, preserve_sparsity, cluster_per_channel,
            cluster_gradient_aggregation)
        kwargs.setdefault("name", f"cluster_{layer.name}")
        super().__init__(layer, **kwargs)

    def _per_channel(self, weight):
        return self.cluster_per_channel and isinstance(self.layer, keras.layers.Conv2D) and len(weight.shape) == 4

    def _algorithm_class(self, label, weight):
        if self._per_channel(weight):
            return PerChannelClusteringAlgorithm
        custom = getattr(self.layer, "get_clusterable_algorithm", None)
        chosen = custom(label) if callable(custom) else None
        return chosen or ClusteringAlgorithm

    def build(self, input_shape=None):
        self.build_wrapped_layer(input_shape, "clustered", "cluster")
        labelled = REGISTRY.labelled_weights(self.layer)
        if not labelled:
            raise ValueError(f"Layer '{self.layer.name}' has no weights to cluster.")
        self._clustered_weights, self.weight_labels, self.cluster_centroids = [], [], []
        self.sparsity_masks, self.zero_centroids, self._algorithms = [], [], []
        for weight, label in labelled:
            values = ops.convert_to_numpy(weight)
            per_channel = self._per_channel(weight)
            centroids = initial_centroids(values, self.number_of_clusters, self.cluster_centroids_init,
                                          per_channel=per_channel, preserve_sparsity=self.preserve_sparsity)
            stem = label.replace("/", "_")
            self._clustered_weights.append(weight)
            self.weight_labels.append(label)
            self.cluster_centroids.append(self.add_weight(
                name=f"cluster_centroids_{stem}", shape=centroids.shape, dtype="float32",
                initializer=keras.initializers.Constant(centroids), trainable=True))
            self._algorithms.append(self._algorithm_class(label, weight))
            if self.preserve_sparsity:
                # tfmot's mask: the weights whose nearest centroid is the zero centroid stay zero from now on.
                algorithm = self._algorithms[-1](centroids, self.cluster_gradient_aggregation)
                initial = ops.convert_to_numpy(algorithm.get_clustered_weight(
                    algorithm.get_pulling_indices(values), values))
                self.sparsity_masks.append(self.add_weight(
                    name=f"sparsity_mask_{stem}", shape=weight.shape, dtype="float32",
                    initializer=keras.initializers.Constant((initial != 0).astype("float32")), trainable=False))
                zero = np.argmin(np.abs(centroids), axis=-1)
                self.zero_centroids.append(self.add_weight(
                    name=f"zero_centroid_{stem}", shape=zero.shape, dtype="int32",
                    initializer=keras.initializers.Constant(zero), trainable=False))
        self.built = True

    def _zero_centroid_kept(self, i):
        """The centroids of weight `i`; with `preserve_sparsity` the zero centroid (per channel) reads as exactly 0.

        Which centroid is the zero one is fixed at build (the one nearest 0), as in tfmot; reading it through
        `where` also gives it no gradient, so it never drifts.
        """
        centroids = self.cluster_centroids[i]
        if not self.preserve_sparsity:
            return centroids
        is_zero = ops.one_hot(self.zero_centroids[i], centroids.shape[-1], dtype="bool")
        return ops.where(is_zero, ops.zeros_like(centroids), centroids)

    def effective_weights(self):
        """`[(variable, value)]`: each clustered weight replaced by its centroids (what the layer computes with)."""
        substitutes = []
        for i, weight in enumerate(self._clustered_weights):
            centroids = self._zero_centroid_kept(i)
            original = weight * self.sparsity_masks[i] if self.preserve_sparsity else weight
            algorithm = self._algorithms[i](centroids, self.cluster_gradient_aggregation)
            substitutes.append((weight, algorithm.get_clustered_weight(algorithm.get_pulling_indices(original),
                                                                      original)))
        return substitutes

    def get_config(self):
        config = super().get_config()
        config.update({
            "number_of_clusters": self.number_of_clusters,
            "cluster_centroids_init": self.cluster_centroids_init.value,
            "preserve_sparsity": self.preserve_sparsity,
            "cluster_per_channel": self.cluster_per_channel,
            "cluster_gradient_aggregation": self.cluster_gradient_aggregation.value,
        })
        return config
