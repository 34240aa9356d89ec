"""`QuantizeConfig`: which weights, activations and outputs of a layer are quantized, and how."""

import abc

import keras

from kopt.quantization.quantizers import ActivationQuantizer, WeightQuantizer


class QuantizeConfig(abc.ABC):
    """Tells `quantize_apply` how to quantize one layer (tfmot's interface, for Keras 3).

    Implement it for a custom layer and pass it to `quantize_annotate_layer`.
    The wrapper substitutes quantized weight values while the layer runs, so
    `set_quantize_weights` / `set_quantize_activations` are optional hooks.

    Example:

    ```python
    class DenseConfig(kopt.quantization.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return [(layer.kernel, kopt.quantization.WeightQuantizer())]
        def get_activations_and_quantizers(self, layer):
            return [(layer.activation, kopt.quantization.ActivationQuantizer())]
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

    @abc.abstractmethod
    def get_output_quantizers(self, layer):
        """Returns `[quantizer]` applied to the layer's output (at most one)."""

    @abc.abstractmethod
    def get_config(self):
        """Returns the constructor arguments as a dict."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="kopt")
class Default8BitQuantizeConfig(QuantizeConfig):
    """The default int8 scheme for one layer.

    Args:
        weight_attrs: names of the weight attributes to quantize (e.g. `["kernel"]`).
        per_axis: per-channel weight ranges (Conv) or per-tensor (Dense).
        axis: channel axis of the weights when `per_axis`.
        quantize_activation: quantize around `layer.activation` (after ReLU-like
            and linear activations, before softmax/sigmoid/tanh).
        quantize_output: quantize the layer's output (layers without an activation).

    Example:

    ```python
    config = kopt.quantization.Default8BitQuantizeConfig(["kernel"], per_axis=True)
    ```
    """

    def __init__(self, weight_attrs=(), per_axis=False, axis=-1, quantize_activation=False, quantize_output=False):
        self.weight_attrs = list(weight_attrs)
        self.per_axis = bool(per_axis)
        self.axis = int(axis)
        self.quantize_activation = bool(quantize_activation)
        self.quantize_output = bool(quantize_output)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, name), WeightQuantizer(per_axis=self.per_axis, axis=self.axis))
                for name in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        if self.quantize_activation and hasattr(layer, "activation"):
            return [(layer.activation, ActivationQuantizer())]
        return []

    def get_output_quantizers(self, layer):
        return [ActivationQuantizer()] if self.quantize_output else []

    def get_config(self):
        return {"weight_attrs": self.weight_attrs, "per_axis": self.per_axis, "axis": self.axis,
                "quantize_activation": self.quantize_activation, "quantize_output": self.quantize_output}

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__
