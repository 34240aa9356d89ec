"""How much each channel of a group matters: "l1", "l2", "bn_scale" or "taylor" scores per channel class."""

import keras
import numpy as np

L = keras.layers

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")


def output_axis(layer):
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return -2
    return -1


def kernel_of(layer):
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return layer.pointwise_kernel
    if isinstance(layer, L.Embedding):
        return layer.embeddings
    return layer.kernel


def per_output(value, axis, norm):
    value = np.moveaxis(np.asarray(value, np.float64), axis, -1).reshape(-1, value.shape[axis])
    return np.abs(value).sum(0) if norm == "l1" else np.sqrt((value ** 2).sum(0))


def _add(scores, graph, ids, values):
    for i, value in zip(ids, values):
        c = graph.find(i)
        scores[c] = scores.get(c, 0.0) + float(value)


def head_values(layer, norm):
    """One score per attention head: the norm of its query, key, value and output kernel slices together."""
    kernels = [keras.ops.convert_to_numpy(v) for v in (
        layer.query_dense.kernel, layer.key_dense.kernel, layer.value_dense.kernel)]
    per_head = [np.moveaxis(k, 1, 0).reshape(k.shape[1], -1) for k in kernels]
    per_head.append(keras.ops.convert_to_numpy(layer.output_dense.kernel).reshape(layer.num_heads, -1))
    values = np.concatenate(per_head, axis=1).astype(np.float64)
    return np.abs(values).sum(1) if norm == "l1" else np.sqrt((values ** 2).sum(1))


def weight_scores(graph, norm):
    """`{channel class: score}`: the L1 or L2 norm of each output filter, summed over the group's producers
    (and of each attention head's kernel slices)."""
    scores = {}
    for info in graph.layers.values():
        if info.role in ("producer", "embedding"):
            kernel = keras.ops.convert_to_numpy(kernel_of(info.layer))
            _add(scores, graph, info.outputs, per_output(kernel, output_axis(info.layer), norm))
        elif info.role == "attention":
            _add(scores, graph, info.heads, head_values(info.layer, norm))
    return scores


def bn_scores(graph):
    """`{channel class: score}`: |gamma| of the BatchNormalization layers on each channel (Network Slimming).

    Channels that pass through no scaled BatchNormalization are absent.
    """
    scores = {}
    for info in graph.layers.values():
        layer = info.layer
        if info.role == "per_channel" and isinstance(layer, L.BatchNormalization) and layer.scale:
            _add(scores, graph, info.inputs, np.abs(keras.ops.convert_to_numpy(layer.gamma)))
    return scores


def taylor_scores(graph, model, data, loss):
    """`{channel class: score}`: first-order Taylor importance, |sum of w * dL/dw| over each output filter and bias.

    The loss is `loss(y, model(x))` averaged over `data`, a tuple `(x, y)` of arrays; each filter's
    score is the change of the loss its removal predicts (Molchanov et al., 2019), summed over the group.
    """
    import tensorflow as tf

    x, y = data
    producers = [info for info in graph.layers.values() if info.role in ("producer", "embedding")]
    variables = [kernel_of(info.layer) for info in producers]
    biases = [getattr(info.layer, "bias", None) for info in producers]
    watched = variables + [b for b in biases if b is not None]
    totals = [np.zeros(v.shape) for v in watched]
    batch = 64
    for start in range(0, len(x), batch):
        with tf.GradientTape() as tape:
            value = loss(y[start:start + batch], model(x[start:start + batch], training=False))
            value = tf.reduce_mean(value)
        grads = tape.gradient(value, watched)
        for total, g in zip(totals, grads):
            if g is not None:
                total += np.asarray(g)
    scores = {}
    bias_index = len(variables)
    for index, info in enumerate(producers):
        kernel = keras.ops.convert_to_numpy(variables[index])
        axis = output_axis(info.layer)
        product = np.moveaxis(kernel * totals[index], axis, -1).reshape(-1, kernel.shape[axis]).sum(0)
        if biases[index] is not None:
            product = product + keras.ops.convert_to_numpy(biases[index]) * totals[bias_index]
            bias_index += 1
        _add(scores, graph, info.outputs, np.abs(product))
    return scores
