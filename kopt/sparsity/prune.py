"""`prune_low_magnitude` and `strip_pruning`: put pruning wrappers in a model and take them out."""

import logging

import keras

from kopt._keras.clone import (
    as_graph_model, copy_layer, copy_with_values, is_subclassed_model, rewrite_model, strip_wrappers)
from kopt._keras.sublayers import is_keras_layer
from kopt.sparsity import _registry as registry
from kopt.sparsity.pruning_policy import PruningPolicy
from kopt.sparsity.schedules import ConstantSparsity
from kopt.sparsity.wrapper import PruneLowMagnitude, validate_pruning_params

logger = logging.getLogger("kopt")

def prune_low_magnitude(
    to_prune,
    pruning_schedule=ConstantSparsity(0.5, 0),
    block_size=(1, 1),
    block_pooling_type="AVG",
    pruning_policy=None,
    sparsity_m_by_n=None,
    *,
    prune_depthwise=False,
    **kwargs,
):
    """Makes a layer, a list of layers or a model prune its weights by magnitude during training.

    Same API as `tfmot.sparsity.keras.prune_low_magnitude`, for Keras 3 (same
    positional arguments). Train the result with the `UpdatePruningStep`
    callback, then `strip_pruning` it.

    - A layer is wrapped in a `PruneLowMagnitude` wrapper; an unsupported layer
      raises a ValueError.
    - A list of layers gives a list of wrapped layers (InputLayers and layers
      that are already wrapped are kept as they are).
    - A Sequential or Functional model is cloned, recursing into nested
      models, with every prunable layer wrapped (only those a
      `pruning_policy` allows, when one is given). Its weights are copied; the
      original model is left untouched. Layers that cannot be pruned are kept
      as they are and named in one `kopt` log line. The result is not compiled.
    - A built subclassed model (layers as attributes, a `call`) is copied and
      pruned as a custom layer (below), inside a Functional model with the
      inputs it was built for (float, or int32 when its first layer is an
      Embedding); `strip_pruning` gives back its class. A subclassed model
      nested in a Functional model is pruned the same way.

    What is pruned, as in tfmot: the kernels of Dense, EinsumDense, Conv*,
    Conv*Transpose and MultiHeadAttention, the pointwise kernel of
    SeparableConv*, Embedding's embeddings, and the `kernel` and
    `recurrent_kernel` of LSTM, GRU and SimpleRNN (and of `keras.layers.RNN`
    with LSTMCell/GRUCell/SimpleRNNCell cells, stacked or not). Biases and
    normalization weights stay dense.

    Custom layers (KerasHub's TransformerEncoder, ViT blocks, your own) are
    pruned through the layers they hold as attributes: each of those kernels
    gets its own mask, as if the sublayer were wrapped (what tfmot does for a
    `PrunableLayer` returning them). The custom layer is wrapped whole, so its
    own `call` and config stay as they are. Weights a custom layer creates
    itself (e.g. a position embedding) stay dense and are named in a log line:
    a `PrunableLayer` says what to prune instead.

    DepthwiseConv1D/2D kernels are not pruned by default: tfmot deliberately
    leaves them dense (each channel has only a few weights, so pruning them
    costs much accuracy for little size). When a model or a list is pruned they
    are left as plain layers and named in a `kopt` log line. Pruning them is
    opt-in: pass `prune_depthwise=True`, or wrap the layer yourself,
    `prune_low_magnitude(keras.layers.DepthwiseConv2D(3))`: a depthwise layer
    passed on its own is pruned (in tfmot it would get a wrapper that prunes
    nothing), and a model that already holds it wrapped keeps it so.

    Args:
        to_prune: a `keras.layers.Layer`, a list of layers, or a `keras.Model`
            (Sequential, Functional, or subclassed and built).
        pruning_schedule: a `PruningSchedule` (`ConstantSparsity(0.5, 0)` by default).
        block_size: `(height, width)` of weight blocks pruned together; for
            rank-2 weights (Dense, Embedding) only.
        block_pooling_type: "AVG" or "MAX": how a block's magnitude is pooled.
        pruning_policy: a `PruningPolicy` instance (e.g.
            `PruneForLatencyOnXNNPack()`) or None (default). With a model, the
            policy first checks it (`ensure_model_supports_pruning` raises a
            ValueError if the model does not qualify), then only the layers it
            allows (`allow_pruning`) are wrapped, nested models included; the
            others are copied as they are. As in tfmot, it is not used when
            `to_prune` is a layer or a list.
        sparsity_m_by_n: `(m, n)`: m zeros in every n consecutive input-channel
            weights, e.g. `(2, 4)`; Dense and Conv2D-like layers only.
        prune_depthwise: keyword only. When pruning a model or a list, also
            prune DepthwiseConv1D/2D kernels (default False, as tfmot).
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

    # DepthwiseConv2D kernels stay dense unless asked for:
    cnn = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.DepthwiseConv2D(3),
                            keras.layers.Conv2D(4, 1)])
    default = kopt.sparsity.prune_low_magnitude(cnn)  # wraps the Conv2D only
    everything = kopt.sparsity.prune_low_magnitude(cnn, prune_depthwise=True)
    assert [type(layer).__name__ for layer in default.layers] == ["DepthwiseConv2D", "PruneLowMagnitude"]
    assert [type(layer).__name__ for layer in everything.layers] == ["PruneLowMagnitude"] * 2

    # Only the 1x1 Conv2D layers XNNPACK's sparse inference speeds up (the model must qualify):
    mobile = keras.Sequential([
        keras.Input((32, 32, 3)), keras.layers.ZeroPadding2D(1),
        keras.layers.Conv2D(8, 3, strides=2, padding="valid"), keras.layers.Conv2D(16, 1),
        keras.layers.GlobalAveragePooling2D(keepdims=True), keras.layers.Flatten(), keras.layers.Dense(2)])
    latency = kopt.sparsity.prune_low_magnitude(
        mobile, pruning_policy=kopt.sparsity.PruneForLatencyOnXNNPack())
    assert [type(layer).__name__ for layer in latency.layers][1:3] == ["Conv2D", "PruneLowMagnitude"]
    ```
    """
    _check_pruning_policy(pruning_policy)
    if not isinstance(prune_depthwise, bool):
        raise ValueError(f"`prune_depthwise` must be True or False, got {prune_depthwise!r}.")
    params = dict(zip(
        ("pruning_schedule", "block_size", "block_pooling_type", "sparsity_m_by_n"),
        validate_pruning_params(pruning_schedule, block_size, block_pooling_type, sparsity_m_by_n),
    ))

    if pruning_policy is not None and not isinstance(to_prune, keras.Model):
        logger.info("prune_low_magnitude: `pruning_policy` applies to whole models only (as in tfmot); "
                    "ignored for a layer or a list of layers.")
    if isinstance(to_prune, (list, tuple)):
        left_dense = []
        pruned = [_prune_listed_layer(layer, params, prune_depthwise, left_dense) for layer in to_prune]
        _log_left_dense(left_dense)
        return pruned
    if isinstance(to_prune, keras.Model):
        if pruning_policy is not None:
            pruning_policy.ensure_model_supports_pruning(to_prune)
        return _prune_model(as_graph_model(to_prune, "to_prune"), params, prune_depthwise, pruning_policy)
    if isinstance(to_prune, keras.layers.Layer):
        return PruneLowMagnitude(to_prune, **params, **kwargs)
    raise ValueError(
        "`to_prune` must be a keras.layers.Layer, a list of layers, or a Sequential/Functional "
        f"keras.Model; got {type(to_prune).__module__}.{type(to_prune).__name__}. "
        "(tf_keras / tf.keras 2 models are not Keras 3 models: use tfmot for those.)"
    )


def _check_pruning_policy(pruning_policy):
    if pruning_policy is None or isinstance(pruning_policy, PruningPolicy):
        return
    if isinstance(pruning_policy, type) and issubclass(pruning_policy, PruningPolicy):
        fix = f"pass an instance: pruning_policy={pruning_policy.__name__}()"
    elif type(pruning_policy).__module__.startswith("tensorflow_model_optimization"):
        fix = ("tfmot's policies work on tf_keras layers only: use kopt's, e.g. "
               "pruning_policy=kopt.sparsity.PruneForLatencyOnXNNPack()")
    else:
        fix = ("pass None, kopt.sparsity.PruneForLatencyOnXNNPack(), or an instance of your own subclass of "
               "kopt.sparsity.PruningPolicy")
    raise ValueError(f"`pruning_policy` must be a kopt.sparsity.PruningPolicy instance or None, got "
                     f"{pruning_policy!r}: {fix}.")


def _describe(layer):
    return f"{layer.name} ({layer.__class__.__name__})"


def _log_left_dense(left_dense):
    if left_dense:
        logger.info(
            "prune_low_magnitude: left dense (DepthwiseConv kernels are not pruned by default, as in tfmot; "
            "pass prune_depthwise=True to prune them): %s", ", ".join(left_dense))


def _prune_listed_layer(layer, params, prune_depthwise, left_dense):
    if isinstance(layer, (PruneLowMagnitude, keras.layers.InputLayer)):
        return layer
    if not isinstance(layer, keras.layers.Layer):
        raise ValueError(f"Every item of `to_prune` must be a keras.layers.Layer; got {layer!r}.")
    if not prune_depthwise and registry.is_prunable(layer) and not registry.is_pruned_by_default(layer):
        left_dense.append(_describe(layer))
        return layer
    return PruneLowMagnitude(layer, **params)


def _prune_model(model, params, prune_depthwise, pruning_policy=None):
    left_out, left_dense, custom, not_allowed = [], [], [], []

    def wrap(layer):
        if isinstance(layer, PruneLowMagnitude):
            return layer.__class__.from_config(layer.get_config()) if not layer.built else layer.copy()
        if pruning_policy is not None and not pruning_policy.allow_pruning(layer):
            if registry.is_prunable(layer):
                not_allowed.append(_describe(layer))
            return copy_layer(layer)
        if not registry.is_prunable(layer):
            if layer.weights:
                (left_out if is_keras_layer(layer) else custom).append(_describe(layer))
            return copy_layer(layer)
        if not prune_depthwise and not registry.is_pruned_by_default(layer):
            left_dense.append(_describe(layer))
            return copy_layer(layer)
        return PruneLowMagnitude(copy_layer(layer), **params)

    pruned = rewrite_model(model, wrap)
    if left_out:
        logger.info("prune_low_magnitude: left unpruned (not prunable): %s", ", ".join(left_out))
    if custom:
        logger.info(
            "prune_low_magnitude: custom layers with weights of their own that kopt does not prune: %s. To prune "
            "them, subclass kopt.sparsity.PrunableLayer and return them from get_prunable_weights().",
            ", ".join(custom))
    _log_left_dense(left_dense)
    if not_allowed:
        logger.info("prune_low_magnitude: left dense by the pruning policy %s: %s",
                    type(pruning_policy).__name__, ", ".join(not_allowed))
    return pruned


def _stripped_layer(wrapper):
    """The wrapped layer, copied, with `weight * mask` baked into its weights."""
    return copy_with_values(wrapper.layer, wrapper.effective_weights())


def strip_pruning(model):
    """Removes the pruning wrappers, baking the masks into the weights.

    Args:
        model: a model (Sequential or Functional, possibly nested) with
            `PruneLowMagnitude` layers, or a single `PruneLowMagnitude` layer.

    Returns:
        A new plain Keras model (or layer) with the same architecture as before
        pruning, no kopt classes, and the pruned weights set to zero. Not compiled.
        A subclassed model pruned by `prune_low_magnitude` comes back as an
        instance of its own class.

    Example:

    ```python
    final = kopt.sparsity.strip_pruning(pruned_model)
    final.save("pruned.keras")
    ```
    """
    stripped = strip_wrappers(model, PruneLowMagnitude, _stripped_layer, "strip_pruning")
    return stripped if isinstance(model, PruneLowMagnitude) else _unwrapped(stripped)


def _unwrapped(model):
    """The subclassed model inside a Functional model that only calls it on its inputs (as `prune_low_magnitude`
    builds for a subclassed model), else `model`."""
    if isinstance(model, keras.Sequential):
        return model
    operations = [op for op in model.operations if not isinstance(op, keras.layers.InputLayer)]
    return operations[0] if len(operations) == 1 and is_subclassed_model(operations[0]) else model
