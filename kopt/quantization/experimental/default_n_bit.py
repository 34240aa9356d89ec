"""The default n-bit scheme (tfmot's `quantization.keras.experimental.default_n_bit`).

Example:

```python
from kopt.quantization.experimental.default_n_bit import DefaultNBitQuantizeScheme
qat = kopt.quantization.quantize_model(model, quantize_scheme=DefaultNBitQuantizeScheme(num_bits_weight=4))
```
"""

import numbers

from kopt.quantization._overrides import OverriddenQuantizeConfig
from kopt.quantization.default_8bit import Default8BitQuantizeRegistry
from kopt.quantization.quantize_scheme import QuantizeRegistry, QuantizeScheme
from kopt.quantization.quantizers import ActivationQuantizer


def _bits(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 2 <= value <= 8:
        raise ValueError(f"`{name}` must be an integer from 2 to 8 (TFLite stores 8 bits), got {value!r}.")
    return int(value)


class DefaultNBitQuantizeRegistry(QuantizeRegistry):
    """The default 8-bit scheme's configs with `num_bits_weight` / `num_bits_activation` bits.

    Args:
        disable_per_axis: quantize Conv2D/DepthwiseConv2D kernels per tensor.
        num_bits_weight: bits of every weight quantizer (2 to 8).
        num_bits_activation: bits of every activation and output quantizer (2 to 8).

    Example:

    ```python
    from kopt.quantization.experimental.default_n_bit import DefaultNBitQuantizeRegistry
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    config = DefaultNBitQuantizeRegistry(num_bits_weight=4).get_quantize_config(dense)
    assert config.get_weights_and_quantizers(dense)[0][1].num_bits == 4
    ```
    """

    def __init__(self, disable_per_axis=False, num_bits_weight=8, num_bits_activation=8):
        self.num_bits_weight = _bits(num_bits_weight, "num_bits_weight")
        self.num_bits_activation = _bits(num_bits_activation, "num_bits_activation")
        self._default = Default8BitQuantizeRegistry(disable_per_axis=disable_per_axis)

    def supports(self, layer):
        return self._default.supports(layer)

    def get_quantize_config(self, layer):
        config = self._default.get_quantize_config(layer)
        if config is None or (self.num_bits_weight, self.num_bits_activation) == (8, 8):
            return config
        return OverriddenQuantizeConfig(config, weights={"num_bits": self.num_bits_weight},
                                        activations={"num_bits": self.num_bits_activation})


class DefaultNBitQuantizeScheme(QuantizeScheme):
    """QAT with n-bit weights and activations (tfmot's experimental `DefaultNBitQuantizeScheme`).

    The default 8-bit scheme with `num_bits_weight` bits for every weight
    quantizer and `num_bits_activation` bits for activations, outputs and model
    inputs. It simulates low bit widths in training only: TFLite stores and runs
    8 bits, so a file converted from 4-bit QAT holds int8 weights with at most
    16 distinct values per tensor (per channel for per-axis kernels); measured:
    the converter stores the narrow-range 4-bit grid as int8 -7..7. The file is
    no smaller than an 8-bit one (compress it, or pack the values yourself).
    Activations below 8 bits train and evaluate in Keras but do not convert:
    the converter types them `i4`, which TFLite's int8 kernels reject
    (measured; `kopt.convert.to_tflite` raises a `ConversionError`).

    Args:
        disable_per_axis: quantize Conv2D/DepthwiseConv2D kernels per tensor.
        num_bits_weight: bits of the weights (2 to 8).
        num_bits_activation: bits of the activations (2 to 8).

    Example:

    ```python
    from kopt.quantization.experimental.default_n_bit import DefaultNBitQuantizeScheme
    qat = kopt.quantization.quantize_model(
        model, quantize_scheme=DefaultNBitQuantizeScheme(num_bits_weight=4, num_bits_activation=8))
    qat.compile("adam", "mse")
    qat.fit(x, y, epochs=1, verbose=0)
    ```
    """

    def __init__(self, disable_per_axis=False, num_bits_weight=8, num_bits_activation=8):
        self.disable_per_axis = bool(disable_per_axis)
        self.num_bits_weight = _bits(num_bits_weight, "num_bits_weight")
        self.num_bits_activation = _bits(num_bits_activation, "num_bits_activation")

    def get_quantize_registry(self):
        return DefaultNBitQuantizeRegistry(self.disable_per_axis, self.num_bits_weight, self.num_bits_activation)

    def get_activation_quantizer(self):
        return ActivationQuantizer(num_bits=self.num_bits_activation)

    def __repr__(self):
        return (f"{type(self).__name__}(disable_per_axis={self.disable_per_axis}, "
                f"num_bits_weight={self.num_bits_weight}, num_bits_activation={self.num_bits_activation})")


__all__ = ["DefaultNBitQuantizeRegistry", "DefaultNBitQuantizeScheme"]
