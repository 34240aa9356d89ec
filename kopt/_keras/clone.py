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
import numpy as np

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


def is_subclassed_model(obj):
    """Whether `obj` is a subclassed `keras.Model` (its graph lives in its `call`, not in layers Keras can clone)."""
    return isinstance(obj, keras.Model) and not is_graph_model(obj)


def build_layer(layer, input_shape, dtype=None):
    """Builds `layer` for inputs of `input_shape`, creating its weights.

    A subclassed model creates its sublayers' weights only when called (its
    default `build` creates none, and Keras's `build_from_config` creates them
    without marking it built): it is called once on a symbolic input instead.

    Args:
        layer: an unbuilt layer.
        input_shape: the shape (or nested structure of shapes) of its input.
        dtype: the input's dtype for a symbolic call (the layer's compute
            dtype by default).
    """
    if isinstance(layer, keras.Model) and not is_graph_model(layer):
        dtype = dtype or layer.compute_dtype
        layer(keras.tree.map_shape_structure(lambda shape: keras.KerasTensor(shape, dtype=dtype), input_shape))
    else:
        layer.build(input_shape)


def as_graph_model(model, name, trace=False):
    """`model` itself if it is Sequential/Functional, else a Functional model made of the subclassed `model`.

    By default the Functional model has one layer, `model` itself, called on
    inputs of the shape `model` was built with (its first call). With
    `trace=True`, `model.call` is first traced on symbolic inputs: when it uses
    only Keras layers and `keras.ops` (no TensorFlow ops, no Python branches on
    tensor values), the result is a Functional graph of its layers, which
    computes what `model` computes (checked on a random batch); otherwise the
    one-layer form is returned.

    The inputs are float, or int32 when the first layer `model` holds is an
    Embedding (token ids). Build the Functional model yourself for other
    inputs: `inputs = keras.Input(shape, dtype=...); keras.Model(inputs, model(inputs))`.

    Args:
        model: a `keras.Model`.
        name: the argument's name, for the error.
        trace: whether to trace `model.call` into a graph of its layers.

    Raises:
        ValueError: if a subclassed `model` was never built.
    """
    if is_graph_model(model):
        return model
    traced = traced_graph(model, name) if trace else None
    if traced is not None:
        return traced
    inputs = _symbolic_inputs(model, name)
    return keras.Model(inputs, model(inputs), name=model.name)


def _symbolic_inputs(model, name):
    config = model.get_build_config() if model.built else None
    if not config or "input_shape" not in config:
        raise ValueError(
            f"`{name}` ('{model.name}', a subclassed {type(model).__name__}) has no recorded input shape: call it "
            "once on a batch of data first (`model(x)`), or give it inputs yourself: "
            f"`inputs = keras.Input(shape); {name} = keras.Model(inputs, model(inputs))`.")
    from kopt._keras.sublayers import sublayers

    first = next(iter(sublayers(model)), None)
    dtype = "int32" if isinstance(first, keras.layers.Embedding) else model.compute_dtype
    return keras.tree.map_shape_structure(lambda shape: keras.Input(batch_shape=shape, dtype=dtype),
                                          config["input_shape"])


def traced_graph(model, name="model"):
    """A Functional model of the layers and operations `model.call` runs, or None where that cannot be had.

    `model` is a subclassed model or a custom layer without weights of its own.

    `model.call` is run on symbolic inputs (see `as_graph_model`). None when it
    uses TensorFlow ops or branches on tensor values, or when the graph does not
    compute what `model` computes on a random batch (a `call` that reads state
    outside its layers).

    Args:
        model: a built subclassed `keras.Model`.
        name: the argument's name, for the error.
    """
    try:
        inputs = _symbolic_inputs(model, name)
    except ValueError:  # never built, or built from several arguments
        return None
    try:
        traced = keras.Model(inputs, model.call(inputs), name=model.name)
    except Exception:  # TensorFlow ops, branches on tensor values ...: not traceable
        return None
    rng = np.random.default_rng(0)
    batch = keras.tree.map_structure(
        lambda t: (rng.integers(0, 2, (2, *t.shape[1:])) if not keras.backend.is_float_dtype(t.dtype)
                   else rng.normal(size=(2, *t.shape[1:]))).astype(t.dtype), inputs)
    try:
        expected = keras.tree.flatten(model(batch, training=False))
        got = keras.tree.flatten(traced(batch, training=False))
    except Exception:
        return None
    if len(expected) != len(got) or not all(
            np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-4, atol=1e-5)
            for a, b in zip(expected, got)):
        return None
    return traced


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


def copy_with_values(layer, substitutes):
    """A copy of `layer` (see `copy_layer`) whose variables in `substitutes` hold the given values instead.

    Args:
        layer: a built Keras layer.
        substitutes: `[(variable, value)]` for some of `layer`'s variables (a wrapper's `effective_weights()`:
            weights with their masks applied).
    """
    given = {id(variable): keras.ops.convert_to_numpy(value) for variable, value in substitutes}
    return copy_layer(layer, weights=[given[id(w)] if id(w) in given else keras.ops.convert_to_numpy(w)
                                      for w in layer.weights])


def _rebuilt(layer, weights):
    new = layer_from_config(layer.__class__, layer.get_config())
    if layer.built:
        build_config = layer.get_build_config()
        if is_subclassed_model(new) and build_config and "input_shape" in build_config:
            build_layer(new, build_config["input_shape"], _input_dtype(layer))
        elif build_config is not None and not new.built:  # as Keras's loader: some layers build in __init__
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


def rewrite_model(model, layer_fn, after_input=None, after_operation=None, after_layer=None):
    """Clones a Sequential/Functional model, replacing each layer by `layer_fn(layer)`.

    Nested Sequential/Functional models are rewritten recursively; a layer used
    several times is rewritten once and stays shared in the result. Operations
    that are not layers, and `Lambda` layers, are carried over unchanged. A
    nested subclassed model is given to `layer_fn` like a custom layer. A
    Functional result is compiled only if `model` was (as
    `keras.models.clone_model` does).

    Args:
        model: a Sequential or Functional `keras.Model`.
        layer_fn: callable taking a layer or a subclassed model (never a Sequential/Functional model,
            an InputLayer, a Lambda or a plain operation) and returning the
            layer to use in its place; use `copy_layer` for layers that stay as
            they are, so the result shares no variables with `model`.
        after_input: optional callable returning a new layer to insert right
            after each float input of the top-level model (e.g. an input
            quantizer); integer inputs (token ids, masks) are left as they are.
        after_operation: optional callable `(operation) -> layer or None`: a
            layer to apply to the output of each plain operation / Lambda
            (e.g. an output quantizer), in every (nested) graph.
        after_layer: optional callable `(new layer) -> layer or None`: a layer
            to apply to the output of each rewritten layer (e.g. the second
            half of a factorized layer), in the top-level graph.

    Returns:
        A new model of the same kind and name.
    """
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
        layers = []
        for layer in model.layers:
            layers.append(clone_function(layer))
            following = after_layer(layers[-1]) if after_layer is not None and is_layer(layers[-1]) else None
            if following is not None:
                layers.append(following)
        return keras.Sequential(head + layers, name=model.name)

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
        if after_layer is not None and is_layer(op):
            following = after_layer(op)
            if following is not None:
                outputs = following(outputs)
        if after_operation is not None and (not is_layer(op) or isinstance(op, keras.layers.Lambda)):
            after = after_operation(op)
            if after is not None:
                outputs = keras.tree.map_structure(
                    lambda t: after(t) if keras.backend.is_float_dtype(t.dtype) else t, outputs)
        return outputs

    return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_function,
                                    call_function=call_function)


def with_input_names(model, rewritten):
    """`rewritten` (a `rewrite_model` of `model`) with the input tensor names of `model`.

    An unnamed keras.Input names its tensor (the SavedModel signature key) apart from its layer, and a rewrite
    keeps the layer names: where the names differ, `rewritten` is called on new inputs named as `model`'s, so
    an export of it has the signature of `model`'s.
    """
    if [t.name for t in rewritten.inputs] == [t.name for t in model.inputs]:
        return rewritten
    structure = model.inputs[0] if isinstance(model, keras.Sequential) else model.input
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name), structure)
    return keras.Model(inputs, rewritten(inputs), name=model.name)


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


def strip_wrappers(model, wrapper_type, stripped_layer, function_name):
    """A copy of `model` with every `wrapper_type` layer replaced by `stripped_layer(wrapper)` (nested models too).

    What `strip_pruning` and `strip_clustering` share.

    Args:
        model: a Sequential or Functional model, or one `wrapper_type` layer.
        wrapper_type: the technique's wrapper class.
        stripped_layer: `stripped_layer(wrapper)` returns the plain layer with the wrapper's values baked in.
        function_name: the public function's name, for error messages.

    Returns:
        The new model (or layer); other layers are copied with their weights.
    """
    if isinstance(model, wrapper_type):
        return stripped_layer(model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model (or a {wrapper_type.__name__} layer), got {type(model).__name__}.")
    if not is_graph_model(model):
        raise ValueError(
            f"{function_name} cannot rewrite the subclassed model '{model.name}' ({type(model).__name__}): only "
            f"Sequential and Functional models can be cloned. Call {function_name} on each "
            f"{wrapper_type.__name__} layer inside it instead.")
    return rewrite_model(model, lambda layer: stripped_layer(layer) if isinstance(layer, wrapper_type)
                         else copy_layer(layer))
