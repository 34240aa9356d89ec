"""Rewriting Sequential and Functional models layer by layer.

Every technique (pruning, quantization, clustering) turns a model into a model
with some layers wrapped, and back. This module is the one place that clones a
model, recurses into nested models and carries the weights over, so the
original model is never modified and never shares variables with the result.

The rewrite is `keras.models.clone_model(..., clone_function, call_function,
recursive=True)`. Keras 3 Functional graphs also hold operations that are not
layers (`x + y`, `keras.ops.mean(x)`, as in MobileNetV3 and ConvNeXt): they have
no state, so they are carried over as they are, and so are `Lambda` layers
(a Python lambda cannot go through `from_config` in safe mode).
"""

import keras

from kopt._keras.calls import accepted_kwargs
from kopt._keras.sublayers import layer_from_config


def is_graph_model(obj):
    """Whether `obj` is a Sequential or Functional model (cloneable by Keras)."""
    return isinstance(obj, keras.Sequential) or _is_functional(obj)


def _is_functional(obj):
    # keras.Model(inputs, outputs) builds a Functional; a subclass of keras.Model that does not
    # call super().__init__(inputs, outputs) does not. Keras 3 exposes no public class for it.
    from keras.src.models.functional import Functional

    return isinstance(obj, Functional)


def is_layer(obj):
    """Whether a graph operation is a Keras layer (as opposed to a plain `keras.ops` operation)."""
    return isinstance(obj, keras.layers.Layer)


def copy_layer(layer, weights=None):
    """Returns a new instance of `layer`, built like it, with its weights.

    Args:
        layer: a Keras layer.
        weights: optional list of arrays to set instead of `layer`'s own
            weights (same order as `layer.get_weights()`).

    Returns:
        A new layer of the same class and config. If `layer` is built, the copy
        is built with the same build config and holds the same weight values.
        A layer whose config holds keys its constructor does not take (e.g.
        KerasHub's `ViTPatchingAndEmbedding`) is rebuilt without them.
    """
    try:
        return _rebuilt(layer, weights)
    except Exception as error:
        raise ValueError(
            f"Cannot copy layer '{layer.name}' ({type(layer).__module__}.{type(layer).__name__}): rebuilding it "
            f"from its config failed ({type(error).__name__}: {str(error).splitlines()[0][:300]}). kopt rebuilds each "
            "layer of the model from its config, so the original model is never modified. Fix the layer's "
            "get_config() so that `type(layer).from_config(layer.get_config())` gives the same layer, or leave it "
            "out of the model you optimize.") from error


def _rebuilt(layer, weights):
    new = layer_from_config(layer.__class__, layer.get_config())
    if layer.built:
        build_config = layer.get_build_config()
        if build_config is not None and not new.built:  # as Keras's loader: some layers build in __init__
            new.build_from_config(build_config)
        if len(new.weights) != len(layer.weights) and build_config and "input_shape" in build_config:
            # A layer with no build() whose sublayers create their weights on its first call (KerasHub's
            # RelativeEmbedding): called once on a symbolic input of its build shape instead.
            new = layer_from_config(layer.__class__, layer.get_config())
            new(keras.KerasTensor(build_config["input_shape"], dtype=_input_dtype(layer)))
        if new.built:
            new.set_weights(layer.get_weights() if weights is None else weights)
    return new


def _input_dtype(layer):
    try:
        return layer.input.dtype  # a layer of a Functional graph
    except (AttributeError, ValueError):
        return layer.compute_dtype


def _subclassed_error(model, inner):
    return ValueError(
        f"Model '{model.name}' contains '{inner.name}', a subclassed model ({type(inner).__name__}), which kopt "
        "cannot rewrite layer by layer (and must not share with the result). Build that part as a "
        "Sequential or Functional model, or apply the technique to the layers inside it yourself "
        "(e.g. wrap them in its __init__).")


def rewrite_model(model, layer_fn, after_input=None, after_operation=None):
    """Clones a Sequential/Functional model, replacing each layer by `layer_fn(layer)`.

    Nested Sequential/Functional models are rewritten recursively; a layer used
    several times is rewritten once and stays shared in the result. Operations
    that are not layers, and `Lambda` layers, are carried over unchanged. A
    nested subclassed model raises a ValueError. A Functional result is
    compiled only if `model` was (as `keras.models.clone_model` does).

    Args:
        model: a Sequential or Functional `keras.Model`.
        layer_fn: callable taking a layer (never a Sequential/Functional model,
            an InputLayer, a Lambda or a plain operation) and returning the
            layer to use in its place; use `copy_layer` for layers that stay as
            they are, so the result shares no variables with `model`.
        after_input: optional callable returning a new layer to insert right
            after each float input of the top-level model (e.g. an input
            quantizer); integer inputs (token ids, masks) are left as they are.
        after_operation: optional callable `(operation) -> layer or None`: a
            layer to apply to the output of each plain operation / Lambda
            (e.g. an output quantizer), in every (nested) graph.

    Returns:
        A new model of the same kind and name.
    """
    _check_nested(model)
    cache = {}

    def clone_function(layer):
        if id(layer) not in cache:
            if isinstance(layer, keras.layers.InputLayer):
                cache[id(layer)] = layer.__class__.from_config(layer.get_config())
            elif is_graph_model(layer):
                cache[id(layer)] = rewrite_model(layer, layer_fn, after_operation=after_operation)
            elif not is_layer(layer) or isinstance(layer, keras.layers.Lambda):
                cache[id(layer)] = layer  # stateless: carried over as it is
            else:
                cache[id(layer)] = layer_fn(layer)
        return cache[id(layer)]

    if isinstance(model, keras.Sequential):
        # Built by hand rather than with clone_model, so that an input layer can go first.
        head = []
        first = model._layers[0] if model._layers else None  # private: .layers hides the InputLayer
        if isinstance(first, keras.layers.InputLayer):
            head.append(keras.Input(batch_shape=first.batch_shape, dtype=first.dtype, name=first.name))
        if after_input is not None and (not model.inputs or keras.backend.is_float_dtype(model.inputs[0].dtype)):
            head.append(after_input())
        return keras.Sequential(head + [clone_function(layer) for layer in model.layers], name=model.name)

    if not _is_functional(model):
        raise ValueError(f"Expected a Sequential or Functional model, got {type(model).__name__}.")
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse,
                              name=t._keras_history.operation.name),  # keep the input layers' names
        model.input,
    )
    quantized_inputs = {}
    if after_input is not None:
        for tensor in keras.tree.flatten(inputs):
            if keras.backend.is_float_dtype(tensor.dtype):  # token ids, masks ... stay integer
                quantized_inputs[id(tensor)] = after_input()(tensor)

    def call_function(op, *args, **kwargs):
        if quantized_inputs:
            args, kwargs = keras.tree.map_structure(
                lambda t: quantized_inputs.get(id(t), t) if isinstance(t, keras.KerasTensor) else t, (args, kwargs))
        # A replacement may take fewer keyword arguments than the layer it replaces (e.g. a folded
        # BatchNormalization, whose nodes record mask=None, becomes an Identity).
        outputs = op(*args, **accepted_kwargs(op, kwargs)) if is_layer(op) else op(*args, **kwargs)
        if after_operation is not None and (not is_layer(op) or isinstance(op, keras.layers.Lambda)):
            after = after_operation(op)
            if after is not None:
                outputs = keras.tree.map_structure(
                    lambda t: after(t) if keras.backend.is_float_dtype(t.dtype) else t, outputs)
        return outputs

    return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_function,
                                    call_function=call_function)


def _check_nested(model):
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.Model):
            if not is_graph_model(layer):
                raise _subclassed_error(model, layer)
            _check_nested(layer)


def walk_layers(model):
    """Yields every layer of `model`, recursing into nested models, depth first.

    Plain operations of a Functional graph (`x + y`) are not layers and are not yielded.
    """
    for layer in getattr(model, "layers", []):
        if not is_layer(layer):
            continue
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer)


def consumers(model):
    """Maps `id(layer)` to the operations of `model` that take its output (one level, no nesting).

    Args:
        model: a built Sequential or Functional model.

    Returns:
        A dict from `id(operation)` to a list of operations (layers or plain
        operations; one entry per use).
    """
    result = {}
    if isinstance(model, keras.Sequential):
        layers = model.layers
        for producer, consumer in zip(layers, layers[1:]):
            result.setdefault(id(producer), []).append(consumer)
        return result
    layers = model.operations
    known = {id(layer) for layer in layers}
    for layer in layers:
        for node in layer._inbound_nodes:
            for tensor in keras.tree.flatten((node.arguments.args, node.arguments.kwargs)):
                history = getattr(tensor, "_keras_history", None)
                if history is not None and id(history.operation) in known:
                    result.setdefault(id(history.operation), []).append(layer)
    return result
