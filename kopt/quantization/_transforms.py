"""Graph planning before quantization: BatchNormalization folding and ReLU fusion.

TFLite folds a BatchNormalization that follows a Conv/DepthwiseConv/Dense into
that layer's weights and fuses a following ReLU/ReLU6 into it. QAT must see the
same graph, or the int8 file would not match the QAT model: the folded weights
are what gets fake-quantized, and a fused op has one output range (after the ReLU).
"""

import keras
import numpy as np

from kopt._keras.clone import consumers, is_graph_model, walk_layers
from kopt.quantization import _registry as registry

L = keras.layers
_FOLDABLE = (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense, L.SeparableConv1D, L.SeparableConv2D)


def _unwrap(layer):
    return getattr(layer, "layer", layer) if isinstance(layer, L.Wrapper) else layer


def _graph_models(model):
    yield model
    for layer in walk_layers(model):
        if is_graph_model(layer):
            yield layer


def _is_linear(layer):
    activation = getattr(layer, "activation", None)
    return activation is None or getattr(activation, "__name__", "") == "linear"


def plan(model, is_quantized):
    """Finds the BatchNormalizations to fold and the outputs that TFLite fuses with a ReLU.

    Args:
        model: a built Sequential/Functional model (possibly nested, possibly annotated).
        is_quantized: callable telling whether a (graph) layer will be quantized.

    Returns:
        `(folds, fused)`: `folds` maps `id(producer)` and `id(batchnorm)` to the
        `(producer, batchnorm)` pair; `fused` is the set of `id(layer)` whose
        output range is the following ReLU's.
    """
    folds, fused = {}, set()
    for graph in _graph_models(model):
        users = consumers(graph)
        producers = {}
        for producer_id, layers in users.items():
            for layer in layers:
                producers.setdefault(id(layer), []).append(producer_id)
        by_id = {id(layer): layer for layer in graph.layers}
        for layer in graph.layers:
            bn = _unwrap(layer)
            if not isinstance(bn, L.BatchNormalization) or not is_quantized(layer):
                continue
            sources = producers.get(id(layer), [])
            if len(sources) != 1 or sources[0] not in by_id:
                continue
            producer = by_id[sources[0]]
            inner = _unwrap(producer)
            if (isinstance(inner, _FOLDABLE) and is_quantized(producer) and users.get(id(producer)) == [layer]
                    and _is_linear(inner) and bn.axis in (-1, len(layer.input.shape) - 1) and inner.built):
                folds[id(producer)] = folds[id(layer)] = (producer, layer)
        for layer in graph.layers:
            if not is_quantized(layer) or not _is_linear(_unwrap(layer)):
                continue
            nxt = users.get(id(layer), [])
            if len(nxt) == 1 and id(nxt[0]) in folds and folds[id(nxt[0])][1] is nxt[0]:
                nxt = users.get(id(nxt[0]), [])  # look through a folded BatchNormalization
            if len(nxt) == 1 and is_quantized(nxt[0]) and registry.is_fusable_activation(_unwrap(nxt[0])):
                fused.add(id(layer))
    return folds, fused


def _batchnorm_affine(batchnorm):
    """`(scale, shift)` of a BatchNormalization in inference mode: `y = x * scale + shift`."""
    values = {w.name: keras.ops.convert_to_numpy(w).astype("float32") for w in batchnorm.weights}
    variance = values["moving_variance"]
    scale = values.get("gamma", np.ones_like(variance)) / np.sqrt(variance + batchnorm.epsilon)
    return scale, values.get("beta", np.zeros_like(variance)) - values["moving_mean"] * scale


def folded_layer(producer, batchnorm):
    """A copy of `producer` (Conv/Depthwise/Separable/Dense) with `batchnorm` folded into its kernel and bias."""
    scale, shift = _batchnorm_affine(batchnorm)
    separable = isinstance(producer, (L.SeparableConv1D, L.SeparableConv2D))
    kernel = keras.ops.convert_to_numpy(producer.pointwise_kernel if separable else producer.kernel)
    bias = keras.ops.convert_to_numpy(producer.bias) if producer.use_bias else np.zeros_like(scale)
    if isinstance(producer, L.DepthwiseConv2D):
        h, w, channels, multiplier = kernel.shape
        kernel = (kernel.reshape(h, w, channels * multiplier) * scale).reshape(kernel.shape)
    else:
        kernel = kernel * scale
    config = producer.get_config()
    config["use_bias"] = True
    new = producer.__class__.from_config(config)
    new.build_from_config(producer.get_build_config())
    weights = [kernel.astype("float32"), (bias * scale + shift).astype("float32")]
    if separable:
        weights = [keras.ops.convert_to_numpy(producer.depthwise_kernel)] + weights
    new.set_weights(weights)
    return new


def split_separable(layer):
    """A SeparableConv1D/2D as DepthwiseConv + 1x1 Conv layers with its weights (TFLite's two ops).

    The intermediate tensor then gets its own quantization range, as in the int8 file.

    Returns:
        `(depthwise, pointwise)`, built, with `layer`'s weights.
    """
    two_d = isinstance(layer, L.SeparableConv2D)
    depthwise_cls, conv_cls = (L.DepthwiseConv2D, L.Conv2D) if two_d else (L.DepthwiseConv1D, L.Conv1D)
    config = layer.get_config()
    depthwise = depthwise_cls(
        kernel_size=config["kernel_size"], strides=config["strides"], padding=config["padding"],
        depth_multiplier=config["depth_multiplier"], data_format=config["data_format"],
        dilation_rate=config["dilation_rate"], use_bias=False, name=f"{layer.name}_depthwise")
    pointwise = conv_cls(
        config["filters"], 1, data_format=config["data_format"], activation=config["activation"],
        use_bias=config["use_bias"], name=f"{layer.name}_pointwise")
    input_shape = layer.get_build_config()["input_shape"]
    depthwise.build(input_shape)
    pointwise.build(depthwise.compute_output_shape(input_shape))
    values = {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}
    depthwise.set_weights([values["depthwise_kernel"]])
    pointwise.set_weights([values["pointwise_kernel"]] + ([values["bias"]] if config["use_bias"] else []))
    return depthwise, pointwise


def _affine_coefficients(layer):
    """`(scale, offset)` arrays of `y = x * scale + offset` for a Rescaling or Normalization layer, else None."""
    if isinstance(layer, L.Rescaling):
        return np.asarray(layer.scale, "float32"), np.asarray(layer.offset, "float32")
    if isinstance(layer, L.BatchNormalization) and layer.built and layer.axis in (-1, 3):
        # Inference-mode statistics, frozen as for a BatchNormalization folded into a convolution.
        return _batchnorm_affine(layer)
    if isinstance(layer, L.Normalization) and not layer.invert and layer.mean is not None:
        mean = keras.ops.convert_to_numpy(layer.mean).astype("float32")
        std = np.maximum(np.sqrt(keras.ops.convert_to_numpy(layer.variance).astype("float32")), keras.config.epsilon())
        return 1.0 / std, -mean / std
    return None


def affine_as_depthwise(layer):
    """A Rescaling/Normalization/BatchNormalization on images as an equivalent 1x1 DepthwiseConv2D, or None.

    TFLite computes these layers as MUL then ADD (or SUB then DIV), with a float intermediate that
    no QAT range covers (a BatchNormalization that follows a Conv/Dense is folded into it instead; this
    is for the others, e.g. ResNetV2's pre-activation ones, with their statistics frozen). A 1x1 depthwise convolution computes the same per-channel `x * a + b` in one
    integer op (each channel's single weight quantizes exactly with per-channel ranges).

    Returns:
        A built `DepthwiseConv2D` named like `layer`, or None (input not rank 4 channels-last, or
        coefficients that do not broadcast per channel).
    """
    coefficients = _affine_coefficients(layer)
    build = layer.get_build_config() if layer.built else None
    if coefficients is None or build is None or keras.config.image_data_format() != "channels_last":
        return None
    shape = build["input_shape"]
    if len(shape) != 4 or shape[-1] is None:
        return None
    channels = shape[-1]
    try:
        scale, offset = (np.broadcast_to(c, (1, 1, 1, channels)).reshape(channels) for c in coefficients)
    except ValueError:
        return None
    depthwise = L.DepthwiseConv2D(1, use_bias=True, name=layer.name, dtype=layer.dtype_policy)
    depthwise.build(shape)
    depthwise.set_weights([scale.reshape(1, 1, channels, 1), offset])
    return depthwise
