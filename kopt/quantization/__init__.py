"""Quantization-aware training for Keras 3 with tfmot's API (`tfmot.quantization.keras` -> `kopt.quantization`).

Example:

```python
qat = kopt.quantization.quantize_model(model)
qat.compile(optimizer="adam", loss="mse")
qat.fit(x, y, epochs=1)
```
"""

from kopt.quantization.integer_forms import (
    IntegerLayerNormalization,
    integer_form,
    integer_lowering,
    with_integer_forms,
)
from kopt.quantization.internal_ranges import InternalRangesQuantizeConfig
from kopt.quantization.layers import QuantizeAnnotate, QuantizeLayer
from kopt.quantization.fix_range import fix_input_output_range, remove_input_range
from kopt.quantization.quantize import (
    quantize_annotate_layer,
    quantize_annotate_model,
    quantize_apply,
    quantize_model,
)
from kopt.quantization.quantize_config import Default8BitQuantizeConfig, QuantizeConfig
from kopt.quantization.quantize_scheme import QuantizeRegistry, QuantizeScheme
from kopt.quantization.quantizers import (
    ActivationQuantizer,
    AllValuesQuantizer,
    FixedQuantizer,
    LastValueQuantizer,
    MovingAverageQuantizer,
    NoQuantizer,
    Quantizer,
    WeightQuantizer,
)
from kopt.quantization.scope import quantize_scope
from kopt.quantization._registry import SublayerQuantizeConfig
from kopt.quantization.wrapper import QuantizeWrapper
from kopt.quantization import default_8bit, experimental  # tfmot's submodules

__all__ = [
    "ActivationQuantizer",
    "AllValuesQuantizer",
    "Default8BitQuantizeConfig",
    "FixedQuantizer",
    "IntegerLayerNormalization",
    "InternalRangesQuantizeConfig",
    "LastValueQuantizer",
    "MovingAverageQuantizer",
    "NoQuantizer",
    "QuantizeAnnotate",
    "QuantizeConfig",
    "QuantizeLayer",
    "QuantizeRegistry",
    "QuantizeScheme",
    "QuantizeWrapper",
    "Quantizer",
    "SublayerQuantizeConfig",
    "WeightQuantizer",
    "default_8bit",
    "experimental",
    "fix_input_output_range",
    "integer_form",
    "integer_lowering",
    "quantize_annotate_layer",
    "quantize_annotate_model",
    "quantize_apply",
    "quantize_model",
    "quantize_scope",
    "remove_input_range",
    "with_integer_forms",
]
