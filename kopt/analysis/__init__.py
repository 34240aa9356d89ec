"""Analysis for quantization: which layers int8 hurts (`sensitivity`).

Example:

```python
report = kopt.analysis.sensitivity(model, x)
print(report)
```
"""

from kopt.analysis.report import SensitivityReport, SensitivityRow
from kopt.analysis.sensitivity import sensitivity

__all__ = ["SensitivityReport", "SensitivityRow", "sensitivity"]
