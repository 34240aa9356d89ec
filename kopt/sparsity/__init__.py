"""Magnitude pruning for Keras 3, with tfmot's API (`tfmot.sparsity.keras` -> `kopt.sparsity`).

Example:

```python
import kopt
pruned = kopt.sparsity.prune_low_magnitude(
    model, pruning_schedule=kopt.sparsity.PolynomialDecay(0.0, 0.8, 0, 1000))
pruned.compile(optimizer="adam", loss="mse")
pruned.fit(x, y, epochs=1, callbacks=[kopt.sparsity.UpdatePruningStep()])
final = kopt.sparsity.strip_pruning(pruned)
```
"""

from kopt.sparsity.callbacks import PruningSummaries, UpdatePruningStep
from kopt.sparsity.prunable_layer import PrunableLayer
from kopt.sparsity.prune import prune_low_magnitude, strip_pruning
from kopt.sparsity.pruning_policy import PruneForLatencyOnXNNPack, PruningPolicy
from kopt.sparsity.schedules import ConstantSparsity, PolynomialDecay, PruningSchedule
from kopt.sparsity.scope import prune_scope
from kopt.sparsity.stats import get_sparsity
from kopt.sparsity.wrapper import PruneLowMagnitude

__all__ = [
    "ConstantSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PruneForLatencyOnXNNPack",
    "PruneLowMagnitude",
    "PruningPolicy",
    "PruningSchedule",
    "PruningSummaries",
    "UpdatePruningStep",
    "get_sparsity",
    "prune_low_magnitude",
    "prune_scope",
    "strip_pruning",
]
