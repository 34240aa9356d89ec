"""`CentroidInitialization` and `GradientAggregation`: tfmot's clustering options, with tfmot's values."""

import enum


class CentroidInitialization(str, enum.Enum):
    """How the cluster centroids are initialized (tfmot's `CentroidInitialization`, same values).

    * `LINEAR`: evenly spaced between the smallest and the largest weight.
    * `RANDOM`: drawn uniformly between the smallest and the largest weight.
    * `DENSITY_BASED`: where the weights' cumulative distribution crosses evenly spaced probabilities.
    * `KMEANS_PLUS_PLUS`: the k-means++ seeding (TensorFlow's `KmeansPlusPlusInitialization` with tfmot's seed, 9).

    Example:

    ```python
    init = kopt.clustering.CentroidInitialization.LINEAR
    assert kopt.clustering.CentroidInitialization("linear") is init
    ```
    """

    LINEAR = "CentroidInitialization.LINEAR"
    RANDOM = "CentroidInitialization.RANDOM"
    DENSITY_BASED = "CentroidInitialization.DENSITY_BASED"
    KMEANS_PLUS_PLUS = "CentroidInitialization.KMEANS_PLUS_PLUS"

    @classmethod
    def _missing_(cls, value):
        # Also accept the member's name, in any case ("linear", "KMEANS_PLUS_PLUS").
        if isinstance(value, str):
            return cls.__members__.get(value.upper().rsplit(".", 1)[-1])
        return None


class GradientAggregation(str, enum.Enum):
    """How each centroid's gradient is formed from its weights' gradients (tfmot's `GradientAggregation`).

    * `SUM`: the sum of its weights' gradients (tfmot's default).
    * `AVG`: their mean.

    Example:

    ```python
    assert kopt.clustering.GradientAggregation("avg") is kopt.clustering.GradientAggregation.AVG
    ```
    """

    SUM = "GradientAggregation.SUM"
    AVG = "GradientAggregation.AVG"

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, str):
            return cls.__members__.get(value.upper().rsplit(".", 1)[-1])
        return None
