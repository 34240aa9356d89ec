"""The default 8-bit scheme (tfmot's `quantization.keras.default_8bit`): what TFLite's int8 kernels expect.

Example:

```python
scheme = kopt.quantization.default_8bit.Default8BitQuantizeScheme(disable_per_axis=True)
qat = kopt.quantization.quantize_model(model, quantize_scheme=scheme)
```
"""

from kopt.quantization import _registry
from kopt.quantization._overrides import OverriddenQuantizeConfig
from kopt.quantization.quantize_scheme import QuantizeRegistry, QuantizeScheme


class Default8BitQuantizeRegistry(QuantizeRegistry):
    """The `QuantizeConfig` of each layer in the default 8-bit scheme (tfmot's `Default8BitQuantizeRegistry`).

    Weights symmetric, narrow-range 8-bit, per channel for Conv2D and
    DepthwiseConv2D kernels (per tensor for Dense, EinsumDense, 1-D and
    transposed convolutions); activations asymmetric 8-bit per tensor. See the
    README's "default 8-bit scheme" for every layer class.

    Args:
        disable_per_axis: quantize Conv2D/DepthwiseConv2D kernels per tensor too.

    Example:

    ```python
    registry = kopt.quantization.default_8bit.Default8BitQuantizeRegistry()
    conv = keras.layers.Conv2D(4, 3)
    conv.build((None, 8, 8, 3))
    config = registry.get_quantize_config(conv)
    assert config.get_weights_and_quantizers(conv)[0][1].per_axis
    ```
    """

    def __init__(self, disable_per_axis=False):
        self.disable_per_axis = bool(disable_per_axis)

    def supports(self, layer):
        return _registry.is_supported(layer)

    def get_quantize_config(self, layer):
        """The layer's `QuantizeConfig`, None for layers left as they are.

        Raises:
            KeyError: for layers with no int8 TFLite kernel (RNNs, Conv3D, wrappers).
        """
        config = _registry.default_config(layer)
        if config is not None and self.disable_per_axis:
            config = OverriddenQuantizeConfig(config, weights={"per_axis": False})
        return config


class Default8BitQuantizeScheme(QuantizeScheme):
    """The default 8-bit scheme supported by TFLite (tfmot's `Default8BitQuantizeScheme`).

    Plain QAT: weights, including zeros, train freely (a pruned model's zeros
    may become non-zero: use `kopt.experimental.combine.
    Default8BitPrunePreserveQuantizeScheme` to keep them).

    Args:
        disable_per_axis: quantize Conv2D and DepthwiseConv2D kernels with one
            range per tensor instead of one per output channel.

    Example:

    ```python
    scheme = kopt.quantization.default_8bit.Default8BitQuantizeScheme()
    qat = kopt.quantization.quantize_apply(kopt.quantization.quantize_annotate_model(model), scheme)
    ```
    """

    def __init__(self, disable_per_axis=False):
        self.disable_per_axis = bool(disable_per_axis)

    def get_quantize_registry(self):
        return Default8BitQuantizeRegistry(disable_per_axis=self.disable_per_axis)

    def __repr__(self):
        return f"{type(self).__name__}(disable_per_axis={self.disable_per_axis})"


__all__ = ["Default8BitQuantizeRegistry", "Default8BitQuantizeScheme"]
