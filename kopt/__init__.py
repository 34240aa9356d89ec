"""kopt: model optimization for Keras 3.

Pruning (`kopt.sparsity`), weight clustering (`kopt.clustering`), quantization-aware training
(`kopt.quantization`, with tfmot's collaborative schemes in `kopt.experimental.combine`), channel pruning
(`kopt.structured`), distillation, compression-aware search, per-layer int8 sensitivity (`kopt.analysis`) and
validated TFLite / ONNX conversion (`kopt.convert`) for Keras 3 models, with tensorflow-model-optimization's API where
it has one. Submodules are imported on first use, so `import kopt` is cheap and changes nothing: no environment
variables, no Keras version switching.

Example:

```python
import kopt
pruned = kopt.sparsity.prune_low_magnitude(model)
```
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("sparsity", "structured", "clustering", "quantization", "experimental", "distill", "search",
               "distribute", "convert", "analysis", "errors", "recipe", "datasets", "demo", "manifest")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"kopt.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'kopt' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
