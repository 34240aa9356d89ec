"""Weight clustering for Keras 3, with tfmot's API (`tfmot.clustering.keras` -> `kopt.clustering`).

Example:

```python
clustered = kopt.clustering.cluster_weights(model, number_of_clusters=16)
clustered.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
clustered.fit(x, y, epochs=1)
final = kopt.clustering.strip_clustering(clustered)
```
"""

from kopt.clustering import experimental
from kopt.clustering.algorithm import ClusteringAlgorithm, PerChannelClusteringAlgorithm
from kopt.clustering.callbacks import ClusteringSummaries
from kopt.clustering.cluster import cluster_weights, strip_clustering
from kopt.clustering.cluster_config import CentroidInitialization, GradientAggregation
from kopt.clustering.clusterable_layer import ClusterableLayer
from kopt.clustering.scope import cluster_scope
from kopt.clustering.wrapper import ClusterWeights

__all__ = [
    "CentroidInitialization",
    "ClusterWeights",
    "ClusterableLayer",
    "ClusteringAlgorithm",
    "ClusteringSummaries",
    "GradientAggregation",
    "PerChannelClusteringAlgorithm",
    "cluster_scope",
    "cluster_weights",
    "experimental",
    "strip_clustering",
]
