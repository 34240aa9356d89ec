"""Rewriting Sequential and Functional models layer by layer.

Every technique (pruning, quantization, clustering) turns a model into a model
with some layers wrapped, and back. This module is the one place that clones a
model, recurses into nested models and carries the weights over, so the
original model is never modified and never shares variables with the result.
"""

import keras
from keras.src.models.functional import Functional

from kopt._keras.calls import accepted_kwargs


def is_graph_model(obj):
    """Whether `obj` is a Sequential or Functional model (cloneable by Keras)."""
    return isinstance(obj, keras.Sequential) or isinstance(obj, Functional)


def copy_layer(layer, weights=None):
    """Returns a new instance of `layer`, built like it, with its weights.

    Args:
        layer: a Keras layer.
        weights: optional list of arrays to set instead of `layer`'s own
            weights (same order as `layer.get_weights()`).

    Returns:
        A new layer of the same class and config. If `layer` is built, the copy
        is built with the same build config and holds the same weight values.
    """
    new = layer.__class__.from_config(layer.get_config())
    if layer.built:
        build_config = layer.get_build_config()
        if build_config is not None:
            new.build_from_config(build_config)
        if new.built:
            new.set_weights(layer.get_weights() if weights is None else weights)
    return new


def _input_name(tensor):
    return tensor._keras_history.operation.name


def rewrite_model(model, layer_fn, after_input=None):
    """Clones a Sequential/Functional model, replacing each layer by `layer_fn(layer)`.

    Nested Sequential/Functional models are rewritten recursively (without
    `after_input`); a layer used several times is rewritten once and stays
    shared in the result. The result is not compiled.

    Args:
        model: a Sequential or Functional `keras.Model`.
        layer_fn: callable taking a layer (not a Sequential/Functional model)
            and returning the layer to use in its place; use `copy_layer` for
            layers that stay as they are, so the result shares no variables
            with `model`.
        after_input: optional callable returning a new layer to insert right
            after each input of the top-level model (e.g. an input quantizer).

    Returns:
        A new model of the same kind and name.
    """
    cache = {}

    def clone(layer):
        if id(layer) not in cache:
            cache[id(layer)] = rewrite_model(layer, layer_fn) if is_graph_model(layer) else layer_fn(layer)
        return cache[id(layer)]

    if isinstance(model, keras.Sequential):
        head = []
        first = model._layers[0] if model._layers else None
        if isinstance(first, keras.layers.InputLayer):
            head.append(keras.Input(batch_shape=first.batch_shape, dtype=first.dtype, name=first.name))
        if after_input is not None:
            head.append(after_input())
        return keras.Sequential(head + [clone(layer) for layer in model.layers], name=model.name)

    if not isinstance(model, Functional):
        raise ValueError(f"Expected a Sequential or Functional model, got {type(model).__name__}.")
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=_input_name(t)),
        model.input,
    )
    feed = inputs if after_input is None else keras.tree.map_structure(lambda t: after_input()(t), inputs)
    # A replacement may take fewer keyword arguments than the layer it replaces (e.g. a folded
    # BatchNormalization, whose nodes record mask=None, becomes an Identity).
    outputs = model._run_through_graph(
        feed, operation_fn=clone, call_fn=lambda op, *args, **kwargs: op(*args, **accepted_kwargs(op, kwargs))
    )
    return Functional(inputs, outputs, name=model.name)


def walk_layers(model):
    """Yields every layer of `model`, recursing into nested models, depth first."""
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer)


def consumers(model):
    """Maps `id(layer)` to the layers of `model` that take its output (one level, no nesting).

    Args:
        model: a built Sequential or Functional model.

    Returns:
        A dict from `id(layer)` to a list of layers (a layer appears once per use).
    """
    result = {}
    layers = model.layers
    if isinstance(model, keras.Sequential):
        for producer, consumer in zip(layers, layers[1:]):
            result.setdefault(id(producer), []).append(consumer)
        return result
    known = {id(layer) for layer in layers}
    for layer in layers:
        for node in layer._inbound_nodes:
            for tensor in keras.tree.flatten((node.arguments.args, node.arguments.kwargs)):
                history = getattr(tensor, "_keras_history", None)
                if history is not None and id(history.operation) in known:
                    result.setdefault(id(history.operation), []).append(layer)
    return result
