"""Converting Keras 3 models to TFLite (validated full int8 and other modes) and ONNX, and looking inside the files.

Example:

```python
tflite = kopt.convert.to_tflite(model, representative_data=np.random.rand(64, 8).astype("float32"),
                                min_top1_agreement=0.5)
print(kopt.convert.inspect(tflite))
```
"""

from kopt.convert.inspect import BenchmarkResult, TFLiteInfo, benchmark, evaluate, inspect
from kopt.convert.onnx import ONNXModel, to_onnx
from kopt.convert.onnx_info import ONNXInfo
from kopt.convert.tflite import TFLiteModel, to_tflite
from kopt.convert.validate import ValidationReport

__all__ = ["BenchmarkResult", "ONNXInfo", "ONNXModel", "TFLiteInfo", "TFLiteModel", "ValidationReport", "benchmark",
           "evaluate", "inspect", "to_onnx", "to_tflite"]
