"""`get_sparsity`: the fraction of zeros in each prunable weight of a model."""

import numpy as np
from keras import ops

from kopt._keras.clone import walk_layers
from kopt.sparsity import registry
from kopt.sparsity.wrapper import PruneLowMagnitude, _weight_label


def get_sparsity(model):
    """Returns `{weight name: fraction of zeros}` for every prunable weight in `model`.

    Works on pruned models (the effective weight `weight * mask` is counted),
    on stripped models and on plain models, recursing into nested models.
    Names are `"<layer name>/<weight>"`, e.g. `"dense/kernel"` or
    `"mha/query/kernel"`, and are the same before and after `strip_pruning`.

    Args:
        model: a Keras model or layer.

    Returns:
        A dict of floats in [0, 1].

    Example:

    ```python
    sparsity = kopt.sparsity.get_sparsity(kopt.sparsity.strip_pruning(pruned))
    assert all(s >= 0.79 for s in sparsity.values())
    ```
    """
    layers = list(walk_layers(model)) if hasattr(model, "layers") else [model]
    result = {}
    for layer in layers:
        if isinstance(layer, PruneLowMagnitude):
            if not layer.built:
                continue
            for weight, mask, label in zip(layer._pruned_weights, layer.masks, layer.weight_labels):
                value = ops.convert_to_numpy(weight * ops.cast(mask, weight.dtype))
                result[f"{layer.layer.name}/{label}"] = float(np.mean(value == 0))
        elif registry.is_prunable(layer) and layer.built:
            for weight in registry.get_prunable_weights(layer):
                value = ops.convert_to_numpy(weight)
                result[f"{layer.name}/{_weight_label(layer, weight)}"] = float(np.mean(value == 0))
    return result

