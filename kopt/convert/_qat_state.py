"""Reading the quantization state of a QAT model (from `kopt.quantization`) by weight names.

A kopt activation quantizer keeps three weights in its layer, named
`<quantizer>_min`, `<quantizer>_max` and `<quantizer>_seen` (e.g.
`activation_min`, `input_seen`): the range, and whether a training batch has
set it (0.0 until the first training step). This module reads them by name,
so it depends on nothing private of the layers.
"""

import keras
import numpy as np

from kopt._keras.clone import walk_layers


def _qat_layer_types():
    from kopt.quantization import QuantizeLayer, QuantizeWrapper

    return QuantizeWrapper, QuantizeLayer


def is_quantization_aware(model):
    """Whether `model` holds kopt QAT layers (its ranges come from training, not from calibration)."""
    return any(isinstance(layer, _qat_layer_types()) for layer in walk_layers(model))


def quantizer_states(layer):
    """The activation-quantizer state of one QAT layer, read from its weights by name.

    Args:
        layer: a layer (a `QuantizeWrapper`, `QuantizeLayer`, or any layer with
            `<name>_min` / `<name>_max` / `<name>_seen` weights).

    Returns:
        A dict from quantizer name (`"activation"`, `"input"`, `"output_0"` ...)
        to a dict with the float values of `"min"`, `"max"` and `"seen"`; only
        quantizers that have a `_seen` weight (activation quantizers) appear.
    """
    values = {}
    for variable in layer.weights:
        name = variable.name.rsplit("/", 1)[-1]
        for field in ("min", "max", "seen"):
            if name.endswith("_" + field) and len(variable.shape) == 0:
                prefix = name[: -len(field) - 1]
                values.setdefault(prefix, {})[field] = float(keras.ops.convert_to_numpy(variable.value))
    return {prefix: state for prefix, state in values.items() if "seen" in state}


def uncalibrated_quantizers(model):
    """Activation quantizers of a QAT model whose ranges no training batch has set.

    A wrapper made with `quantize_output=False` (its output range is the next
    layer's, e.g. a Conv2D followed by a ReLU layer) keeps an activation state
    it does not use, which training never sets: such wrappers are skipped.

    Args:
        model: a Keras model (QAT layers are found in nested models too).

    Returns:
        A list of `(layer name, quantizer name)` whose `_seen` weight is still 0:
        their range is the initial one (e.g. [-6, 6]), not the model's.
    """
    found = []
    for layer in walk_layers(model):
        if isinstance(layer, _qat_layer_types()) and getattr(layer, "quantize_output", True):
            for prefix, state in quantizer_states(layer).items():
                if state["seen"] == 0:
                    found.append((layer.name, prefix))
    return found


def input_ranges(model):
    """The range of the input quantizer (`QuantizeLayer`) right after each model input, or None.

    Args:
        model: a Keras model.

    Returns:
        A list with one `(min, max)` or None per entry of `model.inputs`.
    """
    _, quantize_layer = _qat_layer_types()
    ids = [id(t) for t in model.inputs]
    result = [None] * len(ids)
    candidates = [layer for layer in getattr(model, "layers", []) if isinstance(layer, quantize_layer)]
    for layer in candidates:
        try:
            source = layer.input
        except (AttributeError, ValueError):  # never called, or called on several tensors
            continue
        state = quantizer_states(layer)
        if id(source) in ids and len(state) == 1:
            (values,) = state.values()
            result[ids.index(id(source))] = (values["min"], values["max"])
    if len(ids) == 1 and result[0] is None and len(candidates) == 1:  # e.g. a Sequential model
        values = list(quantizer_states(candidates[0]).values())
        if len(values) == 1:
            result[0] = (values[0]["min"], values[0]["max"])
    return [r if r is None or np.isfinite(r).all() else None for r in result]


def check_calibrated(model, shown=8):
    """Raises a ValueError naming the activation quantizers of a QAT model that no training step has set.

    A file made from such a model would be quantized with their placeholder ranges.

    Args:
        model: a Keras model (QAT or not: a float model passes).
        shown: how many quantizers the message names.
    """
    missing = uncalibrated_quantizers(model)
    if not missing:
        return
    names = [f"{layer} ({quantizer})" for layer, quantizer in missing]
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    raise ValueError(
        f"`model` ('{model.name}') is a quantization-aware model whose activation ranges were never set by "
        f"training: {len(missing)} quantizers still hold their initial range (e.g. [-6, 6]): {listed}. Its file "
        "would be quantized with those placeholder ranges. Fit the QAT model first (a few batches are enough), "
        "or run a calibration pass that trains no weight: a few typical batches in training mode, "
        "`for batch in batches: model(batch, training=True)`.")
