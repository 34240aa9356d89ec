"""`get_sparsity`: the fraction of zeros in each prunable weight of a model."""

import keras
import numpy as np
from keras import ops

from kopt._keras.clone import walk_layers
from kopt.sparsity import _registry as registry


def get_sparsity(model):
    """Returns `{weight name: fraction of zeros}` for every prunable weight in `model`.

    Works on pruned models (the effective weight `weight * mask` is counted),
    on stripped models, on plain models and on QAT models (the weights with
    their sparsity masks), recursing into nested models and into custom layers
    (the kernels of the Dense, EinsumDense, Conv* and Embedding layers they
    hold). Names are `"<layer name>/<weight>"`, e.g. `"dense/kernel"`,
    `"mha/query/kernel"` or `"transformer_layer_0/self_attention_layer/query/kernel"`,
    and are the same before and after `strip_pruning`.

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
        # A wrapper (pruning, QAT) computes its layer with substituted weights: those are counted.
        substitutes = {}
        while isinstance(layer, keras.layers.Wrapper):
            if layer.built and hasattr(layer, "effective_weights"):
                substitutes.update({id(variable): value for variable, value in layer.effective_weights()})
            layer = layer.layer
        if not layer.built or not registry.is_prunable(layer):
            continue
        for variable, label in registry.labelled_prunable_weights(layer):
            value = ops.convert_to_numpy(substitutes.get(id(variable), variable))
            result[f"{layer.name}/{label}"] = float(np.mean(value == 0))
    return result
