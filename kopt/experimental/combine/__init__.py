"""Collaborative optimization schemes (tfmot's `experimental.combine`): QAT that keeps zeros and clusters.

- `Default8BitPrunePreserveQuantizeScheme`: PQAT, a pruned model's zeros stay zero.
- `Default8BitClusterPreserveQuantizeScheme`: CQAT (and PCQAT with `preserve_sparsity`), a clustered
  model's kernels keep their number of unique values.
- `strip_clustering_cqat`: after CQAT, before conversion.

Example:

```python
qat = kopt.quantization.quantize_model(
    kopt.sparsity.strip_pruning(pruned),
    quantize_scheme=kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
```
"""

from kopt.experimental.combine.cluster_preserve import Default8BitClusterPreserveQuantizeScheme
from kopt.experimental.combine.prune_preserve import Default8BitPrunePreserveQuantizeScheme
from kopt.experimental.combine.strip import strip_clustering_cqat

__all__ = ["Default8BitClusterPreserveQuantizeScheme", "Default8BitPrunePreserveQuantizeScheme",
           "strip_clustering_cqat"]
