"""`quantize_model`, `quantize_annotate_layer`, `quantize_annotate_model`, `quantize_apply` (tfmot's API)."""

import logging

import keras
import numpy as np

from kopt._keras.clone import (
    as_graph_model, consumers, copy_layer, is_layer, is_subclassed_model, rewrite_model, traced_graph, walk_layers)
from kopt._keras.inputs import reject_string_inputs
from kopt._keras.nodes import producer
from kopt._keras.operations import is_shape_operation
from kopt._keras.sublayers import is_keras_layer, sublayers
from kopt.quantization import _registry as registry
from kopt.quantization import _transforms as transforms
from kopt.quantization.integer_forms import integer_form
from kopt.quantization.layers import QuantizeAnnotate, QuantizeLayer
from kopt.quantization.quantize_config import QuantizeConfig
from kopt.quantization.quantize_scheme import QuantizeScheme
from kopt.quantization.wrapper import QuantizeWrapper
from kopt.sparsity.wrapper import PruneLowMagnitude

logger = logging.getLogger("kopt")


def _check_model(model, name):
    """`model` as a Sequential/Functional model (a subclassed one is called from a Functional model), checked."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{name}` must be a keras.Model, got {type(model).__module__}.{type(model).__name__}. "
            "(tf_keras / tf.keras 2 models are not Keras 3 models: use tfmot for those.)")
    if not model.built:
        raise ValueError(
            f"`{name}` ('{model.name}') is not built: give it a keras.Input or call it on data once first.")
    model = as_graph_model(model, name, trace=True)
    reject_string_inputs(model, name, "quantize")
    return model


def quantize_annotate_layer(to_annotate, quantize_config=None):
    """Marks a layer to be quantized by `quantize_apply`.

    Args:
        to_annotate: a `keras.layers.Layer`.
        quantize_config: a `QuantizeConfig` for layers the default scheme does
            not know (custom layers), or to change how it is quantized.

    Returns:
        A `QuantizeAnnotate` wrapping the layer (it computes like the layer).

    Example:

    ```python
    model = keras.Sequential([
        keras.Input((8,)),
        kopt.quantization.quantize_annotate_layer(keras.layers.Dense(4, activation="relu")),
        keras.layers.Dense(2),
    ])
    qat = kopt.quantization.quantize_apply(model)
    ```
    """
    if not isinstance(to_annotate, keras.layers.Layer) or isinstance(to_annotate, keras.Model):
        raise ValueError(f"`to_annotate` must be a keras.layers.Layer (not a model), got {type(to_annotate).__name__}.")
    if quantize_config is not None and not isinstance(quantize_config, QuantizeConfig):
        raise ValueError(f"`quantize_config` must be a kopt.quantization.QuantizeConfig, got {quantize_config!r}.")
    return QuantizeAnnotate(to_annotate, quantize_config=quantize_config)


def _matches(layer, selectors):
    return any(layer.name == s if isinstance(s, str) else isinstance(layer, s) for s in selectors)


def quantize_annotate_model(to_annotate, float_layers=None):
    """Marks every layer of a model (nested models included) to be quantized by `quantize_apply`.

    Args:
        to_annotate: a built Sequential, Functional or subclassed model (see
            `quantize_model` for subclassed ones).
        float_layers: layer names or classes to leave float (not annotated).

    Returns:
        A new model with `QuantizeAnnotate` layers; it computes like the original.

    Example:

    ```python
    annotated = kopt.quantization.quantize_annotate_model(model)
    qat = kopt.quantization.quantize_apply(annotated)
    ```
    """
    to_annotate = _check_model(to_annotate, "to_annotate")
    float_layers = tuple(float_layers or ())

    def annotate(layer):
        if isinstance(layer, (QuantizeAnnotate, QuantizeWrapper, QuantizeLayer)):
            return layer.__class__.from_config(layer.get_config()) if not layer.built else _copy_annotated(layer)
        if _matches(layer, float_layers):
            return copy_layer(layer)
        if is_subclassed_model(layer) or registry.is_opaque(layer) and not layer.weights and layer.built:
            # Traced into a graph of its layers and operations where its call allows it: each then gets
            # its own range (InceptionResNetV2's `x + branch * scale`), and a subclassed model its layers'.
            graph = traced_graph(layer, layer.name)
            if graph is not None and len(graph.operations) > len(graph.inputs) + 1:
                return rewrite_model(graph, annotate)
        return QuantizeAnnotate(copy_layer(layer))

    return rewrite_model(to_annotate, annotate)


def _copy_annotated(layer):
    if isinstance(layer, QuantizeAnnotate):
        return QuantizeAnnotate(copy_layer(layer.layer), quantize_config=layer.quantize_config, name=layer.name)
    return copy_layer(layer)


def _integer_replacement(layer):
    """An equivalent layer that TFLite runs as integer ops, or None (see transforms and integer_forms)."""
    replacement = transforms.affine_as_depthwise(layer)  # Rescaling/Normalization/BN: one op, not MUL + ADD
    return replacement if replacement is not None else integer_form(layer)  # LayerNormalization: no NEG


def _scheme(scheme, preserve_sparsity, name):
    """The scheme `quantize_apply` uses: `scheme`, or the one the older `preserve_sparsity=` keyword names."""
    from kopt.quantization.default_8bit import Default8BitQuantizeScheme

    if preserve_sparsity is not None:
        if scheme is not None:
            raise ValueError(
                f"Pass either `{name}` or `preserve_sparsity`, not both (got {name}={scheme!r}, "
                f"preserve_sparsity={preserve_sparsity!r}). To keep zeros, pass "
                f"{name}=kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme().")
        if not isinstance(preserve_sparsity, bool):
            raise ValueError(f"`preserve_sparsity` must be True or False, got {preserve_sparsity!r}.")
        if preserve_sparsity:
            from kopt.experimental.combine import Default8BitPrunePreserveQuantizeScheme

            return Default8BitPrunePreserveQuantizeScheme()
        return Default8BitQuantizeScheme()
    if scheme is None:
        return Default8BitQuantizeScheme()
    if not isinstance(scheme, QuantizeScheme):
        raise ValueError(
            f"`{name}` must be a kopt.quantization.QuantizeScheme (e.g. kopt.quantization.default_8bit."
            f"Default8BitQuantizeScheme()), got {scheme!r}. (tfmot's schemes are tf_keras objects: use kopt's.)")
    return scheme


def _prefix(quantized_layer_name_prefix):
    if quantized_layer_name_prefix is None:
        return ""
    if not isinstance(quantized_layer_name_prefix, str):
        hint = (" Pass a scheme as `quantize_scheme=...`." if isinstance(quantized_layer_name_prefix, QuantizeScheme)
                else "")
        raise ValueError(
            "`quantized_layer_name_prefix` must be a string, e.g. 'quant_', got "
            f"{quantized_layer_name_prefix!r}.{hint}")
    return quantized_layer_name_prefix


def quantize_apply(model, scheme=None, quantized_layer_name_prefix="quant_", *, preserve_sparsity=None):
    """Replaces every annotated layer by its quantization-aware (QAT) version.

    BatchNormalizations that follow an annotated Conv/DepthwiseConv/Dense are
    folded into it (their statistics are frozen), a ReLU/ReLU6 after a layer
    shares that layer's output range (TFLite fuses them), a SeparableConv is split
    into DepthwiseConv + 1x1 Conv (TFLite's two ops, each with its own range), and
    a `QuantizeLayer` is put after each input whose consumers are all quantized. Layers that are
    not annotated stay float.

    Args:
        model: a built Sequential or Functional model with `QuantizeAnnotate` layers.
        scheme: a `QuantizeScheme`; None is
            `kopt.quantization.default_8bit.Default8BitQuantizeScheme()`, plain
            QAT, as in tfmot: weights that are zero may become non-zero. To keep
            a pruned model's zeros, pass
            `kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme()`;
            for a clustered model, `Default8BitClusterPreserveQuantizeScheme()`.
            A layer annotated with its own `QuantizeConfig` keeps it.
        quantized_layer_name_prefix: prefix of the names of the `QuantizeWrapper`
            layers (`"quant_dense"`); None or `""` keeps the layers' names.
        preserve_sparsity: (kopt, keyword-only) older spelling of the scheme:
            True is `Default8BitPrunePreserveQuantizeScheme()` (zeros kept;
            layers whose weights have no zeros get no mask and no extra work),
            False the default scheme. Pass it or `scheme`, not both.

    Returns:
        A new QAT model, not compiled. Compile and fit it, then convert it with
        `kopt.convert.to_tflite`.

    Raises:
        ValueError: listing every annotated layer the default scheme does not
            support, with the two ways out.

    Example:

    ```python
    qat = kopt.quantization.quantize_apply(kopt.quantization.quantize_annotate_model(model))
    ```
    """
    scheme = _scheme(scheme, preserve_sparsity, "scheme")
    prefix = _prefix(quantized_layer_name_prefix)
    model = _check_model(model, "model")
    quantize_registry = scheme.get_quantize_registry()

    def is_quantized(layer):
        return isinstance(layer, QuantizeAnnotate)

    unsupported_layers = [
        layer.layer for layer in walk_layers(model)
        if is_quantized(layer) and layer.quantize_config is None and not quantize_registry.supports(layer.layer)
    ]
    unsupported = [f"{layer.name} ({type(layer).__name__})" for layer in unsupported_layers]
    if any(isinstance(layer, PruneLowMagnitude) for layer in unsupported_layers):
        raise ValueError(
            "The model still has pruning wrappers (" + ", ".join(unsupported) + "). Strip them first: "
            "`quantize_model(kopt.sparsity.strip_pruning(model), quantize_scheme=kopt.experimental.combine."
            "Default8BitPrunePreserveQuantizeScheme())` keeps the zeros through QAT.")
    if unsupported:
        raise ValueError(
            f"The quantization scheme ({scheme!r}) does not support these layers: " + ", ".join(unsupported)
            + ". Either "
            "annotate each with a QuantizeConfig: `quantize_annotate_layer(layer, quantize_config=MyConfig())`; "
            "or leave them float: `quantize_model(model, float_layers=[<names or classes>])` (their ops then "
            "stay float in the TFLite file).")

    _log_custom_weights(model, is_quantized, quantize_registry)
    folds, fused = transforms.plan(model, is_quantized)
    created = []

    def apply(layer):
        if not is_quantized(layer):
            return copy_layer(layer)
        inner = layer.layer
        if id(layer) in folds:
            producer, batchnorm = folds[id(layer)]
            if layer is batchnorm:
                return keras.layers.Identity(name=inner.name)
            inner = transforms.folded_layer(inner, batchnorm.layer)
        if layer.quantize_config is None and isinstance(inner, registry.SEPARABLE):
            depthwise, pointwise = transforms.split_separable(inner)
            return keras.Sequential([
                wrap(depthwise, quantize_registry.get_quantize_config(depthwise), fused=False),  # its own range
                wrap(pointwise, quantize_registry.get_quantize_config(pointwise), fused=id(layer) in fused),
            ], name=inner.name)
        if id(layer) not in folds:
            replacement = _integer_replacement(inner) if layer.quantize_config is None else None
            inner = copy_layer(inner) if replacement is None else replacement
        config = layer.quantize_config or quantize_registry.get_quantize_config(inner)
        return wrap(inner, config, fused=id(layer) in fused)

    def wrap(inner, config, fused):
        if config is None:
            return inner
        # Masks (and their multiply in every step) only where there are zeros to keep.
        keep_zeros = scheme.preserve_sparsity and inner.built and any(
            np.any(keras.ops.convert_to_numpy(variable) == 0)
            for variable, _ in config.get_weights_and_quantizers(inner))
        wrapper = QuantizeWrapper(inner, config, quantize_output=not fused, preserve_sparsity=keep_zeros,
                                  name=f"{prefix}{inner.name}")
        created.append(wrapper)
        return wrapper

    def input_consumers_quantized():
        if isinstance(model, keras.Sequential):
            return bool(model.layers) and is_quantized(model.layers[0])
        users = consumers(model)
        first = [u for t in keras.tree.flatten(model.input) for u in users.get(id(producer(t)), [])]
        return bool(first) and all(is_quantized(u) or not is_layer(u) for u in first)

    def after_operation(operation):
        # Plain operations (`x + y`, `keras.ops.mean`) and Lambda layers are quantized like their layer
        # forms: their output gets its own range, except for shape operations, which keep their input's.
        if is_shape_operation(operation):
            return None
        return QuantizeLayer(scheme.get_activation_quantizer(), name=f"quant_{operation.name}")

    def after_input():
        return QuantizeLayer(scheme.get_activation_quantizer())

    after_input = after_input if input_consumers_quantized() else None
    qat = rewrite_model(model, apply, after_input=after_input, after_operation=after_operation)
    for wrapper in created:
        if wrapper.built:
            wrapper.initialize_ranges()
    return qat


def _log_custom_weights(model, is_quantized, quantize_registry):
    """Names the custom layers whose own weights the default scheme leaves float (no QuantizeConfig given)."""
    custom = []
    for wrapper in walk_layers(model):
        if not is_quantized(wrapper) or wrapper.quantize_config is not None or is_keras_layer(wrapper.layer):
            continue
        layer = wrapper.layer
        config = quantize_registry.get_quantize_config(layer)
        reached = {id(v) for v, _ in config.get_weights_and_quantizers(layer)} if config is not None else set()
        held = {id(w) for sub in sublayers(layer) for w in sub.weights}
        own = [w for w in layer.trainable_weights if id(w) not in reached and id(w) not in held]
        if own:
            custom.append(f"{layer.name} ({type(layer).__name__}: {', '.join(w.name for w in own)})")
    if custom:
        logger.info(
            "quantize_apply: custom layers with weights of their own that QAT leaves float: %s. The converter "
            "quantizes them post-training; to train them quantized, annotate the layer with a QuantizeConfig "
            "(quantize_annotate_layer(layer, quantize_config=...)).", "; ".join(custom))


def quantize_model(to_quantize, quantized_layer_name_prefix="quant_", *, quantize_scheme=None, float_layers=None,
                   preserve_sparsity=None):
    """Makes a model quantization-aware, by default with the int8 scheme of TFLite.

    Same as `quantize_apply(quantize_annotate_model(to_quantize), quantize_scheme)`.
    With the default scheme, weights are symmetric and narrow-range, per
    channel for convolutions and per tensor for Dense; activations are
    asymmetric per tensor with moving-average ranges. As in tfmot, the default
    is plain QAT: a pruned model's zeros are not kept unless you pass
    `quantize_scheme=kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme()`.

    Args:
        to_quantize: a built Keras model: Sequential, Functional (nested models
            included) or subclassed. A subclassed model is traced into a
            Functional graph of its layers where its `call` allows it (only Keras
            layers and `keras.ops`), and quantized layer by layer; otherwise it is
            quantized whole, as a custom layer (see `SublayerQuantizeConfig`).
        quantized_layer_name_prefix: prefix of the quantized layers' names
            (tfmot 0.8's second argument). A `QuantizeScheme` given here is
            taken as `quantize_scheme`, so `quantize_model(model, scheme)` works too.
        quantize_scheme: a `QuantizeScheme`; None is
            `kopt.quantization.default_8bit.Default8BitQuantizeScheme()`.
        float_layers: (kopt, keyword-only) layer names or classes to leave float.
        preserve_sparsity: (kopt, keyword-only) older spelling: True is
            `quantize_scheme=Default8BitPrunePreserveQuantizeScheme()` (see
            `quantize_apply`).

    Returns:
        A new QAT model, not compiled.

    Example:

    ```python
    qat = kopt.quantization.quantize_model(model)
    qat.compile("adam", "mse")
    qat.fit(x, y, epochs=1, verbose=0)
    # a pruned model, its zeros kept through QAT:
    pqat = kopt.quantization.quantize_model(
        kopt.sparsity.strip_pruning(pruned),
        quantize_scheme=kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    ```
    """
    if isinstance(quantized_layer_name_prefix, QuantizeScheme):  # quantize_model(model, scheme)
        if quantize_scheme is not None:
            raise ValueError(f"Two schemes given: {quantized_layer_name_prefix!r} (second argument) and "
                             f"quantize_scheme={quantize_scheme!r}; pass one.")
        quantize_scheme, quantized_layer_name_prefix = quantized_layer_name_prefix, "quant_"
    scheme = _scheme(quantize_scheme, preserve_sparsity, "quantize_scheme")
    prefix = _prefix(quantized_layer_name_prefix)
    to_quantize = _check_model(to_quantize, "to_quantize")
    return quantize_apply(quantize_annotate_model(to_quantize, float_layers=float_layers), scheme, prefix)
