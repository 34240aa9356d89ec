"""Analysis for quantization: which layers int8 hurts (`sensitivity`), and which to keep float so that the
int8 file meets a target (`auto_mixed_precision`).

Example:

```python
report = kopt.analysis.sensitivity(model, x)
print(report)
```
"""

from kopt.analysis.auto_mixed_precision import auto_mixed_precision
from kopt.analysis.mixed_precision_result import MixedPrecisionResult, MixedPrecisionStep
from kopt.analysis.report import SensitivityReport, SensitivityRow
from kopt.analysis.sensitivity import sensitivity

__all__ = ["MixedPrecisionResult", "MixedPrecisionStep", "SensitivityReport", "SensitivityRow",
           "auto_mixed_precision", "sensitivity"]
