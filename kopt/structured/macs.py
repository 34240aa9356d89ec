"""`count_macs`: multiply-accumulates of one inference, from a model's layers and their shapes."""

import keras
import numpy as np

from kopt._keras.nodes import graph_nodes
from kopt.structured.prune_channels import _functional

L = keras.layers


def _positions(shape):
    return int(np.prod([d for d in shape[1:-1]])) if len(shape) > 2 else 1


def _layer_macs(layer, inputs, outputs):
    if not inputs or not outputs or any(d is None for d in outputs[0].shape[1:]):
        return 0
    out_shape, in_channels = outputs[0].shape, inputs[0].shape[-1]
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        window = int(np.prod(layer.kernel_size))
        return _positions(out_shape) * in_channels * layer.depth_multiplier * (window + layer.filters)
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return _positions(out_shape) * int(np.prod(layer.kernel_size)) * out_shape[-1]
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return _positions(inputs[0].shape) * int(np.prod(layer.kernel_size)) * in_channels * layer.filters
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        return _positions(out_shape) * int(np.prod(layer.kernel_size)) * in_channels * layer.filters // layer.groups
    if isinstance(layer, (L.Dense, L.EinsumDense)):
        weights = int(np.prod(layer.kernel.shape))
        return weights * (_positions(out_shape) if isinstance(layer, L.Dense) else 1)
    return 0


def count_macs(model):
    """Multiply-accumulates of one inference (batch 1) in the convolutions and Dense layers of `model`.

    Convolutions count output positions x kernel window x input channels x
    filters (divided by groups); depthwise ones positions x window x channels;
    Dense layers their kernel size per position. Other layers (normalization,
    pooling, activations) are left out: they are a few percent of a CNN's
    arithmetic. Nested models are counted as they are called.

    Args:
        model: a built Sequential or Functional model with fixed input shapes.

    Returns:
        An int.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(16, 3)])
    assert kopt.structured.count_macs(model) == 6 * 6 * 9 * 3 * 16
    ```
    """
    total = 0
    for op, inputs, outputs in graph_nodes(_functional(model, "model")):
        if isinstance(op, keras.Model) and not isinstance(op, keras.Sequential) and hasattr(op, "operations"):
            total += count_macs(op)
        elif isinstance(op, keras.Sequential):
            total += count_macs(op)
        else:
            total += _layer_macs(op, inputs, outputs)
    return total
