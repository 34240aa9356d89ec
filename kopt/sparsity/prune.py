"""`prune_low_magnitude` and `strip_pruning`: put pruning wrappers in a model and take them out."""

import logging

import keras
from keras import ops

from kopt._keras.clone import copy_layer, is_graph_model, rewrite_model
from kopt.sparsity import registry
from kopt.sparsity.schedules import ConstantSparsity
from kopt.sparsity.wrapper import PruneLowMagnitude, validate_pruning_params

logger = logging.getLogger("kopt")

_SUBCLASSED_ERROR = (
    "prune_low_magnitude cannot rewrite the subclassed model '{name}' ({cls}): only Sequential and "
    "Functional models can be cloned layer by layer. Alternatives: build it as a Sequential or "
    "Functional model; or wrap the layers inside it yourself, e.g. "
    "`self.dense = kopt.sparsity.prune_low_magnitude(keras.layers.Dense(10))` in __init__; "
    "or, for a custom layer, subclass kopt.sparsity.PrunableLayer."
)


def prune_low_magnitude(
    to_prune,
    pruning_schedule=ConstantSparsity(0.5, 0),
    block_size=(1, 1),
    block_pooling_type="AVG",
    sparsity_m_by_n=None,
    **kwargs,
):
    """Makes a layer, a list of layers or a model prune its weights by magnitude during training.

    Same API as `tfmot.sparsity.keras.prune_low_magnitude`, for Keras 3. Train
    the result with the `UpdatePruningStep` callback, then `strip_pruning` it.

    - A layer is wrapped in a `PruneLowMagnitude` wrapper; an unsupported layer
      raises a ValueError.
    - A list of layers gives a list of wrapped layers (InputLayers and layers
      that are already wrapped are kept as they are).
    - A Sequential or Functional model is cloned, recursing into nested
      models, with every prunable layer wrapped. Its weights are copied; the
      original model is left untouched. Layers that cannot be pruned are kept
      as they are and named in one `kopt` log line. The result is not compiled.

    Args:
        to_prune: a `keras.layers.Layer`, a list of layers, or a Sequential or
            Functional `keras.Model`.
        pruning_schedule: a `PruningSchedule` (`ConstantSparsity(0.5, 0)` by default).
        block_size: `(height, width)` of weight blocks pruned together; for
            rank-2 weights (Dense, Embedding) only.
        block_pooling_type: "AVG" or "MAX": how a block's magnitude is pooled.
        sparsity_m_by_n: `(m, n)`: m zeros in every n consecutive input-channel
            weights, e.g. `(2, 4)`; Dense and Conv2D-like layers only.
        **kwargs: passed to the wrapper when `to_prune` is a single layer
            (e.g. `name`); ignored otherwise, as in tfmot.

    Returns:
        The wrapped layer, list of layers, or a new (uncompiled) model.

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2)])
    pruned = kopt.sparsity.prune_low_magnitude(
        model, pruning_schedule=kopt.sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1))
    pruned.compile("adam", "mse")
    pruned.fit(np.zeros((4, 8)), np.zeros((4, 2)),
               callbacks=[kopt.sparsity.UpdatePruningStep()], verbose=0)
    final = kopt.sparsity.strip_pruning(pruned)
    ```
    """
    params = dict(zip(
        ("pruning_schedule", "block_size", "block_pooling_type", "sparsity_m_by_n"),
        validate_pruning_params(pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n),
    ))

    if isinstance(to_prune, (list, tuple)):
        return [_prune_listed_layer(layer, params) for layer in to_prune]
    if isinstance(to_prune, keras.Model):
        if not is_graph_model(to_prune):
            raise ValueError(_SUBCLASSED_ERROR.format(name=to_prune.name, cls=type(to_prune).__name__))
        return _prune_model(to_prune, params)
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    raise ValueError(
        "`to_prune` must be a keras.layers.Layer, a list of layers, or a Sequential/Functional "
        f"keras.Model; got {type(to_prune).__module__}.{type(to_prune).__name__}. "
        "(tf_keras / tf.keras 2 models are not Keras 3 models: use tfmot for those.)"
    )


def _prune_listed_layer(layer, params):
    if isinstance(layer, (PruneLowMagnitude, keras.layers.InputLayer)):
        return layer
    if not isinstance(layer, keras.layers.Layer):
        raise ValueError(f"Every item of `to_prune` must be a keras.layers.Layer; got {layer!r}.")
    return PruneLowMagnitude(layer, **params)


def _prune_model(model, params):
    left_out = []

    def wrap(layer):
        if isinstance(layer, PruneLowMagnitude):
            return layer.__class__.from_config(layer.get_config()) if not layer.built else _copy_wrapper(layer)
        if isinstance(layer, keras.Model) or not registry.is_prunable(layer):
            if layer.weights:
                left_out.append(f"{layer.name} ({layer.__class__.__name__})")
            # A subclassed model nested inside cannot be cloned: it is shared as it is.
            return layer if isinstance(layer, keras.Model) else copy_layer(layer)
        return PruneLowMagnitude(copy_layer(layer), **params)

    pruned = rewrite_model(model, wrap)
    if left_out:
        logger.info("prune_low_magnitude: left unpruned (not prunable): %s", ", ".join(left_out))
    return pruned


def _copy_wrapper(wrapper):
    """Copies an already-pruned layer with its masks, thresholds and step."""
    new = PruneLowMagnitude.from_config(wrapper.get_config())
    if not new.layer.built:  # Keras deserialization usually builds it from its build_config already
        new.layer.build_from_config(wrapper.layer.get_build_config())
    new.build()
    new.set_weights(wrapper.get_weights())
    return new


def _stripped_layer(wrapper):
    """The wrapped layer, copied, with `weight * mask` baked into its weights."""
    masked = {
        id(w): ops.convert_to_numpy(w * ops.cast(m, w.dtype))
        for w, m in zip(wrapper._pruned_weights, wrapper.masks)
    }
    values = [masked.get(id(w), None) for w in wrapper.layer.weights]
    values = [v if v is not None else ops.convert_to_numpy(w) for v, w in zip(values, wrapper.layer.weights)]
    return copy_layer(wrapper.layer, weights=values)


def strip_pruning(model):
    """Removes the pruning wrappers, baking the masks into the weights.

    Args:
        model: a model (Sequential or Functional, possibly nested) with
            `PruneLowMagnitude` layers, or a single `PruneLowMagnitude` layer.

    Returns:
        A new plain Keras model (or layer) with the same architecture as before
        pruning, no kopt classes, and the pruned weights set to zero. Not compiled.

    Example:

    ```python
    final = kopt.sparsity.strip_pruning(pruned_model)
    final.save("pruned.keras")
    ```
    """
    if isinstance(model, PruneLowMagnitude):
        return _stripped_layer(model)
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model (or a PruneLowMagnitude layer), got {type(model).__name__}."
        )
    if not is_graph_model(model):
        raise ValueError(
            f"strip_pruning cannot rewrite the subclassed model '{model.name}' ({type(model).__name__}): "
            "only Sequential and Functional models can be cloned. Call strip_pruning on each "
            "PruneLowMagnitude layer inside it instead."
        )

    def strip(layer):
        if isinstance(layer, PruneLowMagnitude):
            return _stripped_layer(layer)
        return layer if isinstance(layer, keras.Model) else copy_layer(layer)

    return rewrite_model(model, strip)
