"""CQAT / PCQAT: quantization-aware training that keeps a clustered model's clusters (tfmot's scheme)."""

from kopt.experimental.combine.cluster_preserve_quantizer import cluster_preserving
from kopt.quantization.default_8bit import Default8BitQuantizeRegistry, Default8BitQuantizeScheme


class Default8BitClusterPreserveQuantizeRegistry(Default8BitQuantizeRegistry):
    """The default 8-bit configs, with every clustered kernel quantized by a `ClusterPreserveQuantizer`.

    Args:
        preserve_sparsity: keep zero centroids at zero (PCQAT).
        disable_per_axis: quantize Conv2D/DepthwiseConv2D kernels per tensor.

    Example:

    ```python
    from kopt.experimental.combine.cluster_preserve import Default8BitClusterPreserveQuantizeRegistry
    dense = keras.layers.Dense(4)
    dense.build((None, 8))
    dense.kernel.assign(np.where(keras.ops.convert_to_numpy(dense.kernel) > 0, 0.5, -0.5))
    config = Default8BitClusterPreserveQuantizeRegistry().get_quantize_config(dense)
    assert config.get_weights_and_quantizers(dense)[0][1].num_clusters == 2
    ```
    """

    def __init__(self, preserve_sparsity=True, disable_per_axis=False):
        super().__init__(disable_per_axis=disable_per_axis)
        self.preserve_sparsity = bool(preserve_sparsity)

    def get_quantize_config(self, layer):
        return cluster_preserving(super().get_quantize_config(layer), layer, self.preserve_sparsity)


class Default8BitClusterPreserveQuantizeScheme(Default8BitQuantizeScheme):
    """QAT that keeps the clusters of a clustered model (tfmot's `Default8BitClusterPreserveQuantizeScheme`).

    For each quantized kernel of a stripped clustered model with 2 to 1024
    unique values, the centroids are those values (per output channel for
    per-channel kernels when every channel has as many, within one; else per
    tensor). In training each weight takes its nearest centroid, the centroids
    train, and the fake-quantized kernel is gathered from them: it keeps at most
    its number of unique values through QAT and into the int8 file (call
    `strip_clustering_cqat` before converting). With `preserve_sparsity`
    (PCQAT) the zero weights and the zero centroid also stay zero.

    Differences from tfmot: every kernel the default scheme quantizes is
    considered (tfmot: Conv2D and Dense only, not DepthwiseConv2D); a
    per-channel kernel is clustered per channel when its channels allow it
    (tfmot: Conv2D only).

    Args:
        preserve_sparsity: PCQAT: keep the zeros of the weights (if they have any)
            at zero.

    Example:

    ```python
    dense = model.layers[0]
    dense.kernel.assign(np.round(keras.ops.convert_to_numpy(dense.kernel) * 4) / 4)  # a few values
    scheme = kopt.experimental.combine.Default8BitClusterPreserveQuantizeScheme()
    qat = kopt.quantization.quantize_model(model, quantize_scheme=scheme)
    qat.compile("adam", "mse")
    qat.fit(x, y, epochs=1, verbose=0)
    final = kopt.experimental.combine.strip_clustering_cqat(qat)
    ```
    """

    def __init__(self, preserve_sparsity=True):
        super().__init__()
        self.preserve_sparsity = bool(preserve_sparsity)

    def get_quantize_registry(self):
        return Default8BitClusterPreserveQuantizeRegistry(self.preserve_sparsity, self.disable_per_axis)

    def __repr__(self):
        return f"{type(self).__name__}(preserve_sparsity={self.preserve_sparsity})"
