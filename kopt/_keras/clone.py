"""Rewriting Sequential and Functional models layer by layer.

Every technique (pruning, quantization, clustering) turns a model into a model
with some layers wrapped, and back. This module is the one place that clones a
model, recurses into nested models and carries the weights over, so the
original model is never modified and never shares variables with the result.
"""

import keras
from keras.src.models.functional import Functional


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


def rewrite_model(model, layer_fn):
    """Clones a Sequential/Functional model, replacing each layer by `layer_fn(layer)`.

    Nested Sequential/Functional models are rewritten recursively; a layer used
    several times is rewritten once and stays shared in the result.

    Args:
        model: a Sequential or Functional `keras.Model`.
        layer_fn: callable taking a (non-model, or subclassed-model) layer and
            returning the layer to use in its place. It must not return the
            same instance for layers it wants detached from `model`; use
            `copy_layer` for those.

    Returns:
        A new model of the same kind and name; not compiled.
    """

    def clone_function(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        if is_graph_model(layer):
            return rewrite_model(layer, layer_fn)
        return layer_fn(layer)

    input_tensors = None
    if isinstance(model, Functional):
        # Keep the input layers' names (Keras would name them after their tensors).
        input_tensors = keras.tree.map_structure(
            lambda t: keras.Input(
                batch_shape=t.shape, dtype=t.dtype, sparse=t.sparse, name=t._keras_history.operation.name
            ),
            model.input,
        )
    return keras.models.clone_model(model, input_tensors=input_tensors, clone_function=clone_function)


def walk_layers(model):
    """Yields every layer of `model`, recursing into nested models, depth first."""
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer)
