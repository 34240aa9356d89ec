"""`QuantizeConfig`: which weights, activations and outputs of a layer are quantized, and how."""

import abc

import keras

from kopt.quantization.quantizers import ActivationQuantizer, LastValueQuantizer


class QuantizeConfig(abc.ABC):
    """Tells `quantize_apply` how to quantize one layer (tfmot's interface, for Keras 3).

    Implement it for a custom layer and pass it to `quantize_annotate_layer`.
    The wrapper substitutes quantized weight values while the layer runs, so
    `set_quantize_weights` / `set_quantize_activations` are optional hooks.

    Example:

    ```python
    class DenseConfig(kopt.quantization.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return [(layer.kernel, kopt.quantization.LastValueQuantizer(
                num_bits=8, per_axis=False, symmetric=True, narrow_range=True))]
        def get_activations_and_quantizers(self, layer):
            return [(layer.activation, kopt.quantization.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False))]
        def get_output_quantizers(self, layer):
            return []
        def get_config(self):
            return {}

    layer = kopt.quantization.quantize_annotate_layer(keras.layers.Dense(4), DenseConfig())
    ```
    """

    @abc.abstractmethod
    def get_weights_and_quantizers(self, layer):
        """Returns `[(variable, quantizer)]` for the weights to quantize."""

    @abc.abstractmethod
    def get_activations_and_quantizers(self, layer):
        """Returns `[(layer.activation, quantizer)]`, or `[]` if the layer's activation is not quantized."""

    def set_quantize_weights(self, layer, quantize_weights):
        """Optional hook; kopt substitutes quantized weights itself."""

    def set_quantize_activations(self, layer, quantize_activations):
        """Optional hook; kopt quantizes around `layer.activation` itself."""

    def prepare(self, layer):
        """Optional hook (kopt): called once when the QAT wrapper around `layer` is built, and again on loading."""

    @abc.abstractmethod
    def get_output_quantizers(self, layer):
        """Returns `[quantizer]` applied to the layer's output (at most one)."""

    def get_internal_quantizers(self, layer):
        """Optional hook (kopt): `[(name, quantizer)]` for tensors the layer computes inside its `call`.

        The layer must take a `quantize_internals` keyword argument in `call` and pass each named tensor
        through `quantize_internals(name, tensor)` (see `InternalRangesQuantizeConfig`). None by default.
        """
        return []

    @abc.abstractmethod
    def get_config(self):
        """Returns the constructor arguments as a dict."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _attr_names(value, name, example):
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"`{name}` must be a list of attribute names, e.g. {example}, got {value!r}.")
    return list(value)


@keras.saving.register_keras_serializable(package="kopt")
class Default8BitQuantizeConfig(QuantizeConfig):
    """The default int8 scheme for one layer (tfmot's `Default8BitQuantizeConfig`).

    Weights are quantized with `LastValueQuantizer(num_bits=8, per_axis=False,
    symmetric=True, narrow_range=True)` (per tensor, as in tfmot, unless
    `per_axis=True`); the activation and the output with an asymmetric per-tensor
    8-bit `MovingAverageQuantizer`: kopt's `ActivationQuantizer`, which takes its
    first range from the first training batch and averages with decay 0.99
    (tfmot's starts from `[-6, 6]` with decay 0.999, so short fine-tuning
    leaves it too wide). The activation is quantized after ReLU-like and linear
    activations and before softmax/sigmoid/tanh.

    Args:
        weight_attrs: names of the weight attributes to quantize (e.g. `["kernel"]`).
        activation_attrs: `["activation"]` to quantize around `layer.activation`,
            or `[]`.
        quantize_output: quantize the layer's output (layers without an activation).
        per_axis: (kopt, keyword-only) per-channel weight ranges (kopt's default
            scheme uses them for Conv2D/DepthwiseConv2D kernels).
        axis: (kopt, keyword-only) channel axis of the weights when `per_axis`.
        quantize_activation: (keyword-only) older spelling of
            `activation_attrs=["activation"]`, accepted so that models saved by
            earlier kopt versions load.

    Example:

    ```python
    config = kopt.quantization.Default8BitQuantizeConfig(["kernel"], ["activation"], False)
    layer = kopt.quantization.quantize_annotate_layer(keras.layers.Dense(4, activation="relu"), config)
    ```
    """

    def __init__(self, weight_attrs=(), activation_attrs=(), quantize_output=False, *, per_axis=False, axis=-1,
                 quantize_activation=None):
        self.weight_attrs = _attr_names(weight_attrs, "weight_attrs", '["kernel"]')
        activation_attrs = _attr_names(activation_attrs, "activation_attrs", '["activation"]')
        if quantize_activation is not None:
            legacy = ["activation"] if quantize_activation else []
            if activation_attrs and activation_attrs != legacy:
                raise ValueError(
                    f"`quantize_activation`={quantize_activation!r} contradicts `activation_attrs`={activation_attrs!r}; "
                    "pass only `activation_attrs` (['activation'] or []).")
            activation_attrs = legacy
        if activation_attrs not in ([], ["activation"]):
            raise ValueError(
                f"`activation_attrs` must be ['activation'] or [], got {activation_attrs!r}: kopt quantizes a layer's "
                "`activation` attribute only. For other attributes write a QuantizeConfig for the layer.")
        self.activation_attrs = activation_attrs
        self.quantize_output = bool(quantize_output)
        self.per_axis = bool(per_axis)
        self.axis = int(axis)

    def get_weights_and_quantizers(self, layer):
        quantizer = LastValueQuantizer(8, self.per_axis, True, True, axis=self.axis)
        return [(_get_attr(layer, name, "weight_attrs"), quantizer) for name in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        return [(_get_attr(layer, name, "activation_attrs"), ActivationQuantizer()) for name in self.activation_attrs]

    def get_output_quantizers(self, layer):
        return [ActivationQuantizer()] if self.quantize_output else []

    def get_config(self):
        return {"weight_attrs": self.weight_attrs, "activation_attrs": self.activation_attrs,
                "quantize_output": self.quantize_output, "per_axis": self.per_axis, "axis": self.axis}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


def _get_attr(layer, attr, argument):
    if not hasattr(layer, attr):
        raise ValueError(
            f"Layer '{layer.name}' ({type(layer).__name__}) has no attribute '{attr}' listed in `{argument}`. "
            "List only attributes the layer has.")
    return getattr(layer, attr)
