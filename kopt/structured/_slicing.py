"""A copy of a layer with some input and output channels taken out (its config and weights sliced)."""

import keras
import numpy as np

from kopt._keras.sublayers import layer_from_config

L = keras.layers

_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D)
_TRANSPOSED = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)


def _take(value, kept, axis):
    return value if kept is None else np.take(value, kept, axis=axis)


def _short_name(variable):
    return variable.path.split("/")[-1]


def _sliced_value(layer, name, value, kept_in, kept_out):
    if isinstance(layer, L.Dense):
        return _take(_take(value, kept_in, 0), kept_out, -1) if name == "kernel" else _take(value, kept_out, -1)
    if isinstance(layer, _TRANSPOSED):
        return _take(_take(value, kept_out, -2), kept_in, -1) if name == "kernel" else _take(value, kept_out, -1)
    if isinstance(layer, _SEPARABLE):
        if name == "depthwise_kernel":
            return _take(value, kept_in, -2)
        if name == "pointwise_kernel":
            return _take(_take(value, kept_in, -2), kept_out, -1)
        return _take(value, kept_out, -1)
    if isinstance(layer, _CONVOLUTIONS):
        return _take(_take(value, kept_in, -2), kept_out, -1) if name == "kernel" else _take(value, kept_out, -1)
    if isinstance(layer, L.Embedding):
        return _take(value, kept_out, -1)
    if isinstance(layer, _DEPTHWISE):
        return _take(value, kept_in, -2) if name == "kernel" else _take(value, kept_in, -1)
    return _take(value, kept_in, -1)  # BatchNormalization, LayerNormalization, PReLU: one entry per channel


def _config(layer, kept_in, kept_out):
    config = layer.get_config()
    if kept_out is not None:
        if isinstance(layer, L.Dense):
            config["units"] = len(kept_out)
        elif isinstance(layer, L.Embedding):
            config["output_dim"] = len(kept_out)
        elif "filters" in config:
            config["filters"] = len(kept_out)
    if isinstance(layer, L.Reshape) and kept_in is not None:
        config["target_shape"] = tuple(config["target_shape"][:-1]) + (len(kept_in),)
    return config


def sliced_layer(layer, kept_in=None, kept_out=None):
    """A new layer like `layer` that reads only the input channels `kept_in` and makes only the channels `kept_out`.

    Args:
        layer: a built Keras layer (Conv*, Dense, SeparableConv*, Embedding, DepthwiseConv*,
            BatchNormalization, LayerNormalization, PReLU or Reshape).
        kept_in: indices of the input's last axis to keep (None: all). For a per-channel layer, its channels.
        kept_out: indices of the new output channels to keep (None: all); producers only.

    Returns:
        The new built layer, named like `layer`, with its weights sliced.
    """
    new = layer_from_config(type(layer), _config(layer, kept_in, kept_out))
    build_config = layer.get_build_config() or {}
    shape = build_config.get("input_shape")
    if shape is not None:
        shape = list(shape)
        if kept_in is not None:
            shape[-1] = len(kept_in)
        new.build(tuple(shape))
    values = [_sliced_value(layer, _short_name(v), keras.ops.convert_to_numpy(v), kept_in, kept_out)
              for v in layer.weights]
    if values:
        new.set_weights(values)
    return new


def sliced_attention(layer, kept_query=None, kept_key=None, kept_value=None, kept_heads=None):
    """A Keras `MultiHeadAttention` like `layer` with fewer heads and/or fewer query, key and value channels.

    Its output channels are the query's (no `output_shape`), so they follow `kept_query`.

    Args:
        layer: a built `keras.layers.MultiHeadAttention`.
        kept_query, kept_key, kept_value: indices of the channels of each input to keep (None: all).
        kept_heads: indices of the heads to keep (None: all).

    Returns:
        The new built layer, named like `layer`.
    """
    config = layer.get_config()
    if kept_heads is not None:
        config["num_heads"] = len(kept_heads)
    new = layer_from_config(type(layer), config)
    shapes = dict(layer.get_build_config()["shapes_dict"])

    def resized(shape, kept):
        return None if shape is None else (tuple(shape) if kept is None else (*shape[:-1], len(kept)))

    query_shape = resized(shapes["query_shape"], kept_query)
    value_shape = resized(shapes["value_shape"], kept_value)
    key_shape = resized(shapes.get("key_shape"), kept_key)
    new.build(query_shape, value_shape, key_shape)
    rows = {"query": kept_query, "key": kept_key if shapes.get("key_shape") is not None else kept_value,
            "value": kept_value}
    values = []
    for variable in layer.weights:
        value = keras.ops.convert_to_numpy(variable)
        sublayer, name = variable.path.split("/")[-2:]
        if sublayer in rows:
            if name == "kernel":
                value = _take(_take(value, rows[sublayer], 0), kept_heads, 1)
            else:
                value = _take(value, kept_heads, 0)
        elif name == "kernel":  # the output projection: (heads, head size, channels)
            value = _take(_take(value, kept_heads, 0), kept_query, -1)
        else:
            value = _take(value, kept_query, -1)
        values.append(value)
    new.set_weights(values)
    return new
