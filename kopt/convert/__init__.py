"""Converting Keras 3 models to TFLite (validated full int8 and other modes) and ONNX, and looking inside the files.

One module per format (`tflite`, `onnx`), the format-neutral comparison in `validation`, the runtimes
(LiteRT, onnxruntime) and file helpers in private modules; this package only re-exports.

Example:

```python
tflite = kopt.convert.to_tflite(model, representative_data=np.random.rand(64, 8).astype("float32"),
                                min_top1_agreement=0.5)
print(kopt.convert.inspect(tflite))
```
"""

from kopt.convert._files import ONNXModel, TFLiteModel
from kopt.convert._litert import BenchmarkResult, TFLiteInfo, benchmark, evaluate
from kopt.convert._onnx_info import ONNXInfo
from kopt.convert.inspection import inspect
from kopt.convert.onnx import to_onnx
from kopt.convert.tflite import to_tflite
from kopt.convert.validation import ValidationReport

__all__ = ["BenchmarkResult", "ONNXInfo", "ONNXModel", "TFLiteInfo", "TFLiteModel", "ValidationReport", "benchmark",
           "evaluate", "inspect", "to_onnx", "to_tflite"]
