"""`cluster_weights` and `strip_clustering`: put clustering wrappers in a model and take them out (tfmot's API)."""

import logging

import keras
import numpy as np

from kopt._keras.clone import as_graph_model, copy_layer, copy_with_values, rewrite_model, strip_wrappers
from kopt._keras.sublayers import is_keras_layer
from kopt.clustering._registry import REGISTRY
from kopt.clustering.cluster_config import CentroidInitialization
from kopt.clustering.wrapper import ClusterWeights, validate_clustering_params

logger = logging.getLogger("kopt")


def cluster_weights(to_cluster, number_of_clusters, cluster_centroids_init=CentroidInitialization.KMEANS_PLUS_PLUS,
                    **kwargs):
    """Makes a layer, a list of layers or a model cluster its weights during training.

    Same API as `tfmot.clustering.keras.cluster_weights`, for Keras 3. With `number_of_clusters=16` each clustered
    kernel holds at most 16 distinct values, so it compresses well (gzip) and, after int8 conversion, uses at most
    16 int8 values. Cluster a trained model, fine-tune it (a lower learning rate helps), then `strip_clustering`.

    - A layer is wrapped in a `ClusterWeights` wrapper; an unsupported one raises a ValueError.
    - A list gives a list of wrapped layers (InputLayers and layers already clustered are kept as they are).
    - A Sequential or Functional model is cloned, recursing into nested models, with every clusterable layer
      wrapped and its weights copied; the model passed in is left untouched. Layers that cannot be clustered are
      kept as they are and named in one `kopt` log line (tfmot raises for them), and so are layers whose kernels
      have no more values than `number_of_clusters` (tfmot skips such Conv2D layers with a warning).
      A built subclassed model is clustered like a custom layer, inside a Functional model.

    What is clustered: the kernels of Dense, EinsumDense, Conv*, Conv*Transpose and MultiHeadAttention, the
    pointwise kernel of SeparableConv*, Embedding's embeddings, the kernels of LSTM/GRU/SimpleRNN cells, and the
    kernels of the layers a custom layer holds (KerasHub's transformer blocks). Biases, normalization weights and
    DepthwiseConv kernels stay as they are (tfmot: "big unrecoverable accuracy loss").

    Args:
        to_cluster: a `keras.layers.Layer`, a list of layers, or a `keras.Model`.
        number_of_clusters: distinct values per clustered weight (at least 2).
        cluster_centroids_init: a `CentroidInitialization`: `KMEANS_PLUS_PLUS` (default), `DENSITY_BASED`, `LINEAR`
            or `RANDOM`. The deterministic ones give the centroids tfmot gives for the same weights.
        **kwargs: `preserve_sparsity=` and `cluster_per_channel=` (see `kopt.clustering.experimental`), and, for a
            single layer, the wrapper's keyword arguments (e.g. `name`); other keywords are ignored for models
            and lists, as in tfmot.

    Returns:
        The wrapped layer, list of layers, or a new (uncompiled) model.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    clustered = kopt.clustering.cluster_weights(
        model, number_of_clusters=4,
        cluster_centroids_init=kopt.clustering.CentroidInitialization.LINEAR)
    clustered.compile("adam", "mse")
    clustered.fit(np.random.rand(32, 8), np.random.rand(32, 2), verbose=0)
    final = kopt.clustering.strip_clustering(clustered)
    assert len(np.unique(final.layers[0].kernel.numpy())) <= 4
    ```
    """
    preserve_sparsity = kwargs.pop("preserve_sparsity", False)
    cluster_per_channel = kwargs.pop("cluster_per_channel", False)
    params = dict(zip(
        ("number_of_clusters", "cluster_centroids_init", "preserve_sparsity", "cluster_per_channel",
         "cluster_gradient_aggregation"),
        validate_clustering_params(number_of_clusters, cluster_centroids_init, preserve_sparsity,
                                   cluster_per_channel, kwargs.pop("cluster_gradient_aggregation", "SUM"))))
    if isinstance(to_cluster, (list, tuple)):
        skipped = []
        clustered = [_cluster_listed(layer, params, skipped) for layer in to_cluster]
        _log_skipped(skipped, [])
        return clustered
    if isinstance(to_cluster, keras.Model):
        return _cluster_model(as_graph_model(to_cluster, "to_cluster"), params)
    if isinstance(to_cluster, keras.layers.Layer):
        return ClusterWeights(to_cluster, **params, **kwargs)
    raise ValueError(
        "`to_cluster` must be a keras.layers.Layer, a list of layers, or a keras.Model; got "
        f"{type(to_cluster).__module__}.{type(to_cluster).__name__}. (tf_keras / tf.keras 2 models are not Keras 3 "
        "models: use tfmot for those.)")


def _describe(layer):
    return f"{layer.name} ({layer.__class__.__name__})"


def _too_few_weights(layer, params):
    """Whether every clustered weight of `layer` has no more values (per channel) than clusters."""
    if not layer.built:
        return False
    per_channel = params["cluster_per_channel"] and isinstance(layer, keras.layers.Conv2D)
    sizes = [int(np.prod(v.shape[:-1] if per_channel and len(v.shape) == 4 else v.shape))
             for v, _ in REGISTRY.labelled_weights(layer)]
    return all(size <= params["number_of_clusters"] for size in sizes)


def _cluster_listed(layer, params, skipped):
    if isinstance(layer, (ClusterWeights, keras.layers.InputLayer)):
        return layer
    if not isinstance(layer, keras.layers.Layer):
        raise ValueError(f"Every item of `to_cluster` must be a keras.layers.Layer; got {layer!r}.")
    if layer.built and not REGISTRY.is_used_by_default(layer) or _too_few_weights(layer, params):
        skipped.append(_describe(layer))
        return layer
    return ClusterWeights(layer, **params)


def _log_skipped(left_out, too_small):
    if left_out:
        logger.info("cluster_weights: left unclustered (no clusterable kernels; DepthwiseConv kernels are not "
                    "clustered, as in tfmot): %s", ", ".join(left_out))
    if too_small:
        logger.info("cluster_weights: left unclustered (no more weights than clusters): %s", ", ".join(too_small))


def _cluster_model(model, params):
    left_out, too_small = [], []

    def wrap(layer):
        if isinstance(layer, ClusterWeights):
            return layer.copy()
        if not REGISTRY.is_used_by_default(layer):
            if layer.weights and (is_keras_layer(layer) or not REGISTRY.is_supported(layer)):
                left_out.append(_describe(layer))
            return copy_layer(layer)
        if _too_few_weights(layer, params):
            too_small.append(_describe(layer))
            return copy_layer(layer)
        return ClusterWeights(copy_layer(layer), **params)

    clustered = rewrite_model(model, wrap)
    _log_skipped(left_out, too_small)
    return clustered


def _stripped_layer(wrapper):
    """The wrapped layer, copied, with the clustered values in its weights."""
    return copy_with_values(wrapper.layer, wrapper.effective_weights())


def strip_clustering(model):
    """Removes the clustering wrappers, writing the clustered values into the weights.

    Args:
        model: a model (Sequential or Functional, possibly nested) with `ClusterWeights` layers, or a single
            `ClusterWeights` layer.

    Returns:
        A new plain Keras model (or layer) with the architecture it had before clustering and no kopt classes: each
        clustered kernel holds at most `number_of_clusters` distinct values (per output channel with
        `cluster_per_channel`). Not compiled.

    Example:

    ```python
    final = kopt.clustering.strip_clustering(clustered_model)
    final.save("clustered.keras")
    ```
    """
    return strip_wrappers(model, ClusterWeights, _stripped_layer, "strip_clustering")
