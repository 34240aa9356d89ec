"""Converting Keras 3 models to TFLite (validated full int8 and other modes) and looking inside the files.

Example:

```python
tflite = kopt.convert.to_tflite(model, representative_data=np.random.rand(64, 8).astype("float32"),
                                min_top1_agreement=0.5)
print(kopt.convert.inspect(tflite))
```
"""

from kopt.convert.inspect import BenchmarkResult, TFLiteInfo, benchmark, evaluate, inspect
from kopt.convert.tflite import TFLiteModel, to_tflite
from kopt.convert.validate import ValidationReport

__all__ = ["BenchmarkResult", "TFLiteInfo", "TFLiteModel", "ValidationReport", "benchmark", "evaluate", "inspect",
           "to_tflite"]
