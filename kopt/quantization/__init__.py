"""Quantization-aware training for Keras 3 with tfmot's API (`tfmot.quantization.keras` -> `kopt.quantization`).

Example:

```python
qat = kopt.quantization.quantize_model(model)
qat.compile(optimizer="adam", loss="mse")
qat.fit(x, y, epochs=1)
```
"""

from kopt.quantization.layers import QuantizeAnnotate, QuantizeLayer
from kopt.quantization.quantize import (
    quantize_annotate_layer,
    quantize_annotate_model,
    quantize_apply,
    quantize_model,
)
from kopt.quantization.quantize_config import Default8BitQuantizeConfig, QuantizeConfig
from kopt.quantization.quantizers import ActivationQuantizer, Quantizer, WeightQuantizer
from kopt.quantization.wrapper import QuantizeWrapper

__all__ = [
    "ActivationQuantizer",
    "Default8BitQuantizeConfig",
    "QuantizeAnnotate",
    "QuantizeConfig",
    "QuantizeLayer",
    "QuantizeWrapper",
    "Quantizer",
    "WeightQuantizer",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_model",
]
