"""`strip_clustering_cqat`: the clustered weights written into a CQAT model's layers, centroids removed."""

import keras

from kopt._keras.clone import copy_layer, is_graph_model, rewrite_model
from kopt.experimental.combine.cluster_preserve_quantizer import ClusterPreserveQuantizeConfig
from kopt.quantization._rewrap import rewrapped
from kopt.quantization.wrapper import QuantizeWrapper


def _stripped(wrapper):
    config = getattr(wrapper, "quantize_config", None)
    if not isinstance(wrapper, QuantizeWrapper) or not isinstance(config, ClusterPreserveQuantizeConfig):
        return copy_layer(wrapper)
    return rewrapped(wrapper, config.config)  # the kernel already holds the clustered values


def strip_clustering_cqat(to_strip):
    """Removes the clustering variables of a CQAT/PCQAT model (tfmot's `strip_clustering_cqat`).

    Each kernel trained with `Default8BitClusterPreserveQuantizeScheme` already
    holds its clustered values (at most as many distinct values as centroids,
    written at each training step); its wrapper loses the centroids, the
    trained copy of the kernel and the indices. The quantization wrappers and
    their ranges stay, so the result computes as the CQAT model does in
    inference and converts with `kopt.convert.to_tflite` (the CQAT model
    converts too: the file is the same).

    Args:
        to_strip: a Sequential or Functional CQAT model, or one `QuantizeWrapper`.

    Returns:
        A new model (or wrapper) with the same ranges; not compiled.

    Example:

    ```python
    dense = model.layers[0]
    dense.kernel.assign(np.round(keras.ops.convert_to_numpy(dense.kernel) * 4) / 4)
    qat = kopt.quantization.quantize_model(
        model, quantize_scheme=kopt.experimental.combine.Default8BitClusterPreserveQuantizeScheme())
    qat.compile("adam", "mse")
    qat.fit(x, y, epochs=1, verbose=0)
    final = kopt.experimental.combine.strip_clustering_cqat(qat)
    tflite = kopt.convert.to_tflite(final, representative_data=x, validation_data=x)
    ```
    """
    if isinstance(to_strip, QuantizeWrapper):
        return _stripped(to_strip)
    if not isinstance(to_strip, keras.Model) or not is_graph_model(to_strip):
        raise ValueError(
            f"`to_strip` must be a Sequential or Functional keras.Model (or a QuantizeWrapper), got "
            f"{type(to_strip).__name__}. A subclassed model is quantized through a Functional model: strip that.")
    return rewrite_model(to_strip, _stripped)
