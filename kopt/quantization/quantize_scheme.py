"""`QuantizeScheme` and `QuantizeRegistry`: how `quantize_apply` quantizes each layer (tfmot's interfaces)."""

import abc

from kopt.quantization.quantizers import ActivationQuantizer


class QuantizeRegistry(abc.ABC):
    """Which `QuantizeConfig` each layer gets (tfmot's `QuantizeRegistry`).

    Example:

    ```python
    class DenseOnly(kopt.quantization.QuantizeRegistry):
        def supports(self, layer):
            return isinstance(layer, keras.layers.Dense)

        def get_quantize_config(self, layer):
            return kopt.quantization.Default8BitQuantizeConfig(["kernel"], ["activation"], False)

    assert DenseOnly().supports(keras.layers.Dense(2))
    ```
    """

    @abc.abstractmethod
    def supports(self, layer):
        """Whether the registry can quantize `layer`."""

    @abc.abstractmethod
    def get_quantize_config(self, layer):
        """Returns the `QuantizeConfig` for `layer`, or None for a layer left as it is (Dropout, Reshape ...)."""


class QuantizeScheme(abc.ABC):
    """How `quantize_apply` quantizes a model (tfmot's `QuantizeScheme`).

    A scheme gives the `QuantizeRegistry` (the `QuantizeConfig` of each layer:
    which weights, bits, per-axis ranges, cluster preservation ...) and says
    whether the zero weights stay zero through training (`preserve_sparsity`)
    and how model inputs and plain operations are quantized
    (`get_activation_quantizer`). kopt applies its own graph transforms for
    TFLite (BatchNormalization folding, ReLU fusion ...) with every scheme:
    `get_layout_transformer` returns None, and no other value is used.

    Built-in schemes: `kopt.quantization.default_8bit.Default8BitQuantizeScheme`
    (the default of `quantize_apply`), `kopt.experimental.combine`'s
    `Default8BitPrunePreserveQuantizeScheme` and
    `Default8BitClusterPreserveQuantizeScheme`, and
    `kopt.quantization.experimental.default_n_bit.DefaultNBitQuantizeScheme`.

    Example:

    ```python
    class DenseOnly(kopt.quantization.QuantizeRegistry):
        def supports(self, layer):
            return True

        def get_quantize_config(self, layer):
            if isinstance(layer, keras.layers.Dense):
                return kopt.quantization.Default8BitQuantizeConfig(["kernel"], [], True)
            return None

    class DenseOnlyScheme(kopt.quantization.QuantizeScheme):
        def get_quantize_registry(self):
            return DenseOnly()

    qat = kopt.quantization.quantize_model(model, quantize_scheme=DenseOnlyScheme())
    ```
    """

    #: Keep the weights that are exactly zero at zero through QAT (a sparsity mask in each wrapper).
    preserve_sparsity = False

    @abc.abstractmethod
    def get_quantize_registry(self):
        """Returns the `QuantizeRegistry` of this scheme."""

    def get_layout_transformer(self):
        """tfmot's hook for graph transforms; kopt applies its own TFLite transforms and returns None."""
        return None

    def get_activation_quantizer(self):
        """The quantizer of model inputs and of the outputs of plain operations (`x + y`) and Lambda layers."""
        return ActivationQuantizer()

    def __repr__(self):
        return f"{type(self).__name__}()"
