"""Distributed training setup for TensorFlow: TPU, multi-worker and multi-device strategies, mixed precision.

`get_strategy` picks and sets up the strategy for where the code runs (TPU, `TF_CONFIG` multi-worker, several
GPUs or the devices given, else one device) and logs why; `describe` says it; `global_batch_size` is the batch
size for `fit`; `set_mixed_precision` sets Keras's dtype policy for the hardware. Under several workers
`get_strategy` returns `KerasMultiWorkerMirroredStrategy`, with which Keras 3's `fit` works (keras#20585).

Example:

```python
strategy = kopt.distribute.get_strategy()
batch_size = kopt.distribute.global_batch_size(32, strategy)
```
"""

from kopt.distribute.mixed_precision import set_mixed_precision
from kopt.distribute.multi_worker import KerasMultiWorkerMirroredStrategy
from kopt.distribute.strategy import describe, get_strategy, global_batch_size

__all__ = ["KerasMultiWorkerMirroredStrategy", "describe", "get_strategy", "global_batch_size", "set_mixed_precision"]
