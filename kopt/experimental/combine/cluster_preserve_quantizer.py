"""Cluster-preserving weight quantization (CQAT / PCQAT): weights gathered from trained centroids.

tfmot's `ClusterPreserveDefaultWeightsQuantizer`: the centroids are the unique values of a clustered
(stripped) kernel, per output channel when every channel has as many (within one) and the kernel is
quantized per channel, else per tensor. A trainable copy of the kernel (tfmot's "original weights")
and the centroids are weights of the wrapper. In each training step every weight of the copy is
assigned its nearest centroid (its "pulling index"), the layer computes with `centroids[index]`, and
that value is written into the layer's kernel (tfmot's `inputs.assign(output)`); the gradient reaches
the centroids (summed over their weights) and, straight through, the copy (whose weights may move to
another centroid). In inference the kernel is used as it is: it holds at most as many values as there
are centroids, and converts as a constant.
"""

import keras
import numpy as np
from keras import ops

from kopt.quantization.quantize_config import QuantizeConfig
from kopt.quantization.quantizers import LastValueQuantizer

#: tfmot's limit: above it a kernel is not treated as clustered.
MAX_CLUSTERS = 1024


def find_centroids(values, axis=None):
    """`(centroids, cluster_axis)` of a clustered weight, as tfmot finds them (its unique values).

    Args:
        values: the weight, a NumPy array.
        axis: the channel axis to try per-channel centroids on (None: per tensor only).

    Returns:
        `centroids` of shape `(k,)` with `cluster_axis=None`, or `(channels, k)` with the axis:
        per channel when the channels' numbers of unique values differ by at most one (shorter rows are
        padded with their last value, which no weight then selects: the first nearest centroid wins).
    """
    values = np.asarray(values, dtype=np.float32)
    if axis is not None and values.ndim > 1:
        rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        uniques = [np.unique(row) for row in rows]
        counts = [len(u) for u in uniques]
        if max(counts) - min(counts) <= 1:
            k = max(counts)
            padded = np.stack([np.concatenate([u, np.full(k - len(u), u[-1], np.float32)]) for u in uniques])
            return padded, axis % values.ndim
    return np.unique(values), None


@keras.saving.register_keras_serializable(package="kopt")
class ClusterPreserveQuantizer(LastValueQuantizer):
    """A `LastValueQuantizer` whose input weight is gathered from `num_clusters` trained centroids.

    Made by `Default8BitClusterPreserveQuantizeScheme` for each clustered
    kernel; its state (centroids, their zero mask, the pulling indices) is
    weights of the wrapper, set from the kernel by `quantize_apply`.

    Args:
        num_bits, per_axis, symmetric, narrow_range, axis: as `LastValueQuantizer`.
        num_clusters: centroids per tensor (or per channel).
        cluster_axis: the channel axis of per-channel centroids, or None.
        preserve_sparsity: keep centroids that are zero at zero (PCQAT).

    Example:

    ```python
    from kopt.experimental.combine.cluster_preserve_quantizer import ClusterPreserveQuantizer
    quantizer = ClusterPreserveQuantizer(8, False, True, True, num_clusters=4)
    ```
    """

    def __init__(self, num_bits, per_axis, symmetric, narrow_range, *, axis=-1, num_clusters, cluster_axis=None,
                 preserve_sparsity=False):
        super().__init__(num_bits, per_axis, symmetric, narrow_range, axis=axis)
        if isinstance(num_clusters, bool) or not isinstance(num_clusters, (int, np.integer)) or num_clusters < 1:
            raise ValueError(f"`num_clusters` must be a positive integer, got {num_clusters!r}.")
        self.num_clusters = int(num_clusters)
        self.cluster_axis = None if cluster_axis is None else int(cluster_axis)
        self.preserve_sparsity = bool(preserve_sparsity)

    def _centroid_shape(self, shape):
        return (self.num_clusters,) if self.cluster_axis is None else (shape[self.cluster_axis], self.num_clusters)

    def build(self, layer, shape, name):
        weights = super().build(layer, shape, name)
        centroid_shape = self._centroid_shape(shape)
        weights["centroids"] = layer.add_weight(
            name=f"{name}_cluster_centroids", shape=centroid_shape, initializer="zeros", trainable=True,
            dtype="float32", autocast=False)
        weights["original_weights"] = layer.add_weight(
            name=f"{name}_original_weights", shape=tuple(shape), initializer="zeros", trainable=True,
            dtype="float32", autocast=False)
        weights["centroids_mask"] = layer.add_weight(
            name=f"{name}_centroids_mask", shape=centroid_shape, initializer="ones", trainable=False,
            aggregation="none", dtype="float32", autocast=False)
        weights["pulling_indices"] = layer.add_weight(
            name=f"{name}_pulling_indices", shape=tuple(shape), initializer="zeros", trainable=False,
            aggregation="none", dtype="int32")
        if self.preserve_sparsity:
            weights["sparsity_mask"] = layer.add_weight(
                name=f"{name}_cluster_sparsity_mask", shape=tuple(shape), initializer="ones", trainable=False,
                aggregation="none", dtype="float32", autocast=False)
        return weights

    def assign_range(self, w, weights):
        """Sets the copy of `w`, the centroids (its unique values), their zero mask, the indices and the range."""
        values = keras.ops.convert_to_numpy(w).astype(np.float32)
        centroids, axis = find_centroids(values, self.cluster_axis)
        if axis != self.cluster_axis or centroids.shape != tuple(weights["centroids"].shape):
            raise ValueError(
                f"The weight of shape {values.shape} has centroids of shape {centroids.shape} (axis {axis}), not "
                f"{tuple(weights['centroids'].shape)} (axis {self.cluster_axis}) as the quantizer was made for.")
        weights["original_weights"].assign(values)
        weights["centroids"].assign(centroids)
        weights["centroids_mask"].assign((centroids != 0).astype(np.float32) if self.preserve_sparsity
                                         else np.ones_like(centroids))
        if self.preserve_sparsity:
            weights["sparsity_mask"].assign((values != 0).astype(np.float32))
        weights["pulling_indices"].assign(ops.convert_to_numpy(self._nearest(values, centroids)).astype(np.int32))
        super().assign_range(values, weights)

    def _broadcast(self, centroids, rank):
        """Centroids shaped to broadcast against a weight with a trailing cluster axis."""
        if self.cluster_axis is None:
            return ops.reshape(centroids, (1,) * rank + (self.num_clusters,))
        shape = [1] * rank + [self.num_clusters]
        shape[self.cluster_axis] = -1
        return ops.reshape(centroids, shape)

    def _nearest(self, x, centroids):
        x = ops.convert_to_tensor(x, "float32")
        return ops.argmin(ops.abs(ops.expand_dims(x, -1) - self._broadcast(centroids, len(x.shape))), axis=-1)

    def _gathered(self, indices, centroids, rank):
        one_hot = ops.one_hot(ops.cast(indices, "int32"), self.num_clusters, dtype="float32")
        return ops.sum(one_hot * self._broadcast(ops.convert_to_tensor(centroids, "float32"), rank), axis=-1)

    def training_weight(self, weights):
        """The clustered weight of the last training step, `centroids[pulling_indices]`: what the wrapper writes
        into the layer's kernel after each training step (without gradient)."""
        centroids = ops.convert_to_tensor(weights["centroids"]) * weights["centroids_mask"]
        indices = weights["pulling_indices"]
        return ops.stop_gradient(self._gathered(indices, centroids, len(indices.shape)))

    def __call__(self, inputs, training, weights):
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        x = ops.cast(inputs, "float32")
        if training:
            original = ops.convert_to_tensor(weights["original_weights"])
            if self.preserve_sparsity:
                original = original * weights["sparsity_mask"]
            centroids = ops.convert_to_tensor(weights["centroids"]) * weights["centroids_mask"]
            indices = ops.cast(self._nearest(ops.stop_gradient(original), ops.stop_gradient(centroids)), "int32")
            weights["pulling_indices"].assign(indices)
            # Straight through: the copy gets the gradient of the clustered weights (tfmot's
            # add_gradient_to_original_weight); the centroids get it summed over their weights. The kernel
            # itself (`inputs`) is overwritten after the step and gets a zero gradient.
            x = (self._gathered(indices, centroids, len(x.shape)) + original - ops.stop_gradient(original)
                 + 0.0 * x)
        return super().__call__(ops.cast(x, dtype), training, weights)

    def get_config(self):
        return {**super().get_config(), "num_clusters": self.num_clusters, "cluster_axis": self.cluster_axis,
                "preserve_sparsity": self.preserve_sparsity}


@keras.saving.register_keras_serializable(package="kopt")
class ClusterPreserveQuantizeConfig(QuantizeConfig):
    """`config` with its clustered weights quantized by `ClusterPreserveQuantizer`.

    Args:
        config: the layer's `QuantizeConfig` in the default scheme.
        clusters: one entry per weight of `config.get_weights_and_quantizers`:
            None (quantized as `config` says) or `{"num_clusters": k, "cluster_axis": axis or None}`.
        preserve_sparsity: keep zero centroids at zero (PCQAT).

    Example:

    ```python
    from kopt.experimental.combine.cluster_preserve_quantizer import ClusterPreserveQuantizeConfig
    config = ClusterPreserveQuantizeConfig(
        kopt.quantization.Default8BitQuantizeConfig(["kernel"], ["activation"], False),
        clusters=[{"num_clusters": 4, "cluster_axis": None}])
    ```
    """

    def __init__(self, config, clusters, preserve_sparsity=False):
        self.config = config
        self.clusters = [None if c is None else {"num_clusters": int(c["num_clusters"]),
                                                 "cluster_axis": c.get("cluster_axis")} for c in clusters]
        self.preserve_sparsity = bool(preserve_sparsity)

    def get_weights_and_quantizers(self, layer):
        pairs = self.config.get_weights_and_quantizers(layer)
        if len(pairs) != len(self.clusters):
            raise ValueError(f"Layer '{layer.name}' has {len(pairs)} quantized weights, the config was made for "
                             f"{len(self.clusters)}.")
        return [(v, q if c is None else ClusterPreserveQuantizer(
                    q.num_bits, q.per_axis, q.symmetric, q.narrow_range, axis=q.axis,
                    preserve_sparsity=self.preserve_sparsity, **c))
                for (v, q), c in zip(pairs, self.clusters)]

    def get_activations_and_quantizers(self, layer):
        return self.config.get_activations_and_quantizers(layer)

    def get_output_quantizers(self, layer):
        return self.config.get_output_quantizers(layer)

    def get_internal_quantizers(self, layer):
        return self.config.get_internal_quantizers(layer)

    def prepare(self, layer):
        self.config.prepare(layer)

    def get_config(self):
        return {"config": keras.saving.serialize_keras_object(self.config), "clusters": self.clusters,
                "preserve_sparsity": self.preserve_sparsity}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = keras.saving.deserialize_keras_object(config["config"])
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


def cluster_preserving(config, layer, preserve_sparsity):
    """`config` made cluster-preserving for the clustered weights of the built `layer`, or `config` itself.

    A weight counts as clustered when it has 2 to 1024 unique values (per channel, or per tensor) and
    its quantizer is a `LastValueQuantizer` (tfmot: 1 value or more than 1024 are left as they are).
    """
    if config is None or not layer.built:
        return config
    clusters = []
    for variable, quantizer in config.get_weights_and_quantizers(layer):
        entry = None
        if isinstance(quantizer, LastValueQuantizer) and not isinstance(quantizer, ClusterPreserveQuantizer):
            centroids, axis = find_centroids(keras.ops.convert_to_numpy(variable),
                                             quantizer.axis if quantizer.per_axis else None)
            if 1 < centroids.shape[-1] <= MAX_CLUSTERS:
                entry = {"num_clusters": int(centroids.shape[-1]), "cluster_axis": axis}
        clusters.append(entry)
    if not any(clusters):
        return config
    return ClusterPreserveQuantizeConfig(config, clusters, preserve_sparsity)
