"""`InternalRangesQuantizeConfig`: QAT ranges for the tensors a layer computes inside its `call`."""

import keras

from kopt.quantization.quantize_config import QuantizeConfig
from kopt.quantization.quantizers import ActivationQuantizer


def quantized_internals(layer):
    """The names of the tensors `layer` computes inside its `call` that the int8 file keeps, or `()`.

    A layer declares them with a `quantized_internals` attribute (a tuple of names) and passes each of
    those tensors through `quantize_internals(name, tensor)`, a keyword argument of its `call`.
    """
    names = getattr(layer, "quantized_internals", ())
    return tuple(names) if isinstance(names, (tuple, list)) else ()


@keras.saving.register_keras_serializable(package="kopt")
class InternalRangesQuantizeConfig(QuantizeConfig):
    """The default int8 scheme for a layer that computes several TFLite ops (kopt's `IntegerLayerNormalization`).

    The layer's output gets an asymmetric 8-bit range, and so does each tensor
    it names in `quantized_internals` (the mean, the variance, the inverse
    standard deviation ... of a LayerNormalization). In training the QAT
    wrapper only records the ranges of those tensors (moving averages, as for
    activations); in inference, and so in the exported graph, it fake-quantizes
    them. The TFLite converter then has a range for every tensor of the layer
    and needs no `representative_data` for it.

    Recording without rounding in training keeps the layer's gradients finite:
    a variance rounded to zero would give an infinite inverse square root.

    Example:

    ```python
    layer = kopt.quantization.IntegerLayerNormalization()
    layer.build((None, 8))
    config = kopt.quantization.InternalRangesQuantizeConfig()
    assert [name for name, _ in config.get_internal_quantizers(layer)][:2] == ["mean", "centered"]
    ```
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def get_output_quantizers(self, layer):
        return [ActivationQuantizer()]

    def get_internal_quantizers(self, layer):
        return [(name, ActivationQuantizer()) for name in quantized_internals(layer)]

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)

    __hash__ = object.__hash__
