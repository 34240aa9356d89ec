"""Compression-aware hyperparameter search on keras-tuner, measured on real .tflite files.

`CompressionTuner` searches a hypermodel's hyperparameters together with its
compression (sparsity, quantization mode, QAT or post-training int8,
distillation), converts every trial with `kopt.convert.to_tflite` and measures
the file: accuracy in LiteRT, bytes and latency. `pareto_front` gives the
trials no other trial beats on every objective; `TrialResult` is one trial.

Example:

```python
space = kopt.search.resolve_compression({"sparsity": [0.0, 0.8], "quantization": ["int8", None]})
print(sorted(space))
```
"""

from kopt.search.compression import DEFAULT_COMPRESSION, resolve_compression
from kopt.search.pareto import pareto_front
from kopt.search.plot import plot_pareto
from kopt.search.results import TrialResult
from kopt.search.tuner import CompressionTuner

__all__ = ["DEFAULT_COMPRESSION", "CompressionTuner", "TrialResult", "pareto_front", "plot_pareto",
           "resolve_compression"]
