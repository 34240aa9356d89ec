"""Which weights of which Keras layer class are pruned."""

import keras

from kopt.sparsity.prunable_layer import PrunableLayer

L = keras.layers

# Layer class -> attributes holding the prunable weights. Biases, norms and
# attention scales are left dense, as in tfmot.
_ATTRIBUTES = (
    ((L.Dense, L.EinsumDense), ("kernel",)),
    ((L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose), ("kernel",)),
    ((L.DepthwiseConv1D, L.DepthwiseConv2D), ("kernel",)),
    ((L.SeparableConv1D, L.SeparableConv2D), ("pointwise_kernel",)),
    ((L.Embedding,), ("embeddings",)),
)

_MHA_SUBLAYERS = ("query_dense", "key_dense", "value_dense", "output_dense")

SUPPORTED_LAYERS = tuple(cls for classes, _ in _ATTRIBUTES for cls in classes) + (L.MultiHeadAttention,)


def is_prunable(layer):
    """Whether `layer` is a built-in prunable layer or opts in with `get_prunable_weights`."""
    return (
        isinstance(layer, PrunableLayer)
        or callable(getattr(layer, "get_prunable_weights", None))
        or isinstance(layer, SUPPORTED_LAYERS)
    )


def _as_variable(layer, value, attribute):
    if not isinstance(value, keras.Variable):
        raise ValueError(
            f"Layer '{layer.name}' ({layer.__class__.__name__}): `{attribute}` is not a plain variable "
            f"(got {type(value).__name__}); LoRA-enabled or already-quantized layers cannot be pruned. "
            "Prune before calling enable_lora()/quantize()."
        )
    return value


def get_prunable_weights(layer):
    """Returns the list of variables of `layer` that pruning masks.

    Args:
        layer: a built Keras layer for which `is_prunable(layer)` is True.

    Returns:
        A list of `keras.Variable`s.
    """
    if isinstance(layer, PrunableLayer) or callable(getattr(layer, "get_prunable_weights", None)):
        return list(layer.get_prunable_weights())
    if isinstance(layer, L.MultiHeadAttention):
        return [_as_variable(layer, getattr(layer, name).kernel, f"{name}.kernel") for name in _MHA_SUBLAYERS]
    for classes, attributes in _ATTRIBUTES:
        if isinstance(layer, classes):
            return [_as_variable(layer, getattr(layer, a), a) for a in attributes]
    raise ValueError(f"Layer '{layer.name}' ({layer.__class__.__name__}) is not prunable.")
