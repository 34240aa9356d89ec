"""The compression space a `CompressionTuner` searches, and how one trial applies its compression.

A compression space is a dict. Each key is fixed (a value), searched over a
list of values, or (for "sparsity" and "temperature") searched over a
`(low, high)` or `(low, high, step)` range. Its keys and defaults are in
`DEFAULT_COMPRESSION`:

- "sparsity": final fraction of zeros in every prunable kernel, in [0, 1).
  0 skips pruning. Default: 0 to 0.9 in steps of 0.1.
- "channels": fraction of each channel group removed physically
  (`kopt.structured.prune_channels`, then "prune_epochs" of fine-tuning),
  in [0, 1): a smaller, faster network. Default 0 (not searched).
- "clusters": distinct values per kernel after weight clustering
  (`kopt.recipe.cluster`, after pruning, keeping its zeros; then "prune_epochs" of fine-tuning), an integer >= 3,
  or 0 for no clustering. Default 0 (not searched); a list searches, e.g. `[0, 16, 32]`. An int8 QAT trial then
  keeps the clusters (`Default8BitClusterPreserveQuantizeScheme`).
- "float_layers": for "int8", how many of the layers int8 hurts most stay float (mixed precision): an integer
  >= 0. `kopt.analysis.sensitivity` ranks the trained (pruned, clustered) model's layers
  (`SensitivityReport.keep_float_candidates`); a QAT trial leaves them out of QAT
  (`quantize_model(float_layers=...)`), and the file keeps them float (`to_tflite(keep_float=...)`). Default 0
  (not searched); a list searches, e.g. `[0, 1, 2]`.
- "quantization": "int8", "int16x8", "float16", "dynamic" or None (float32).
  Default: all but "int16x8".
- "qat": for "int8", quantization-aware fine-tuning (True) or post-training
  calibration (False). Default: both.
- "prune_epochs": epochs of fine-tuning while pruning (default 2).
- "qat_epochs": epochs of quantization-aware fine-tuning (default 1).
- "teacher": a trained Keras model. When given, the main training may
  distill from it (`kopt.distill.Distiller`).
- "distillation": with a teacher, distill (True) or train on labels only
  (False). Default: both.
- "temperature": the distillation temperature (default 4.0).

Searched keys become keras-tuner hyperparameters named "compression/<key>",
next to the hypermodel's own. A trial prunes, strips and fine-tunes
quantization-aware with `kopt.recipe`, the recipe `kopt demo` and the model
zoo use.
"""

import keras
import numpy as np

# A trial compresses with kopt's one recipe (as `kopt demo` and the model zoo do): its schedule, step count and
# fine-tuning compile rule, used by `CompressionTuner`.
from kopt.recipe import pruning_schedule, recompile_like, steps_per_epoch  # noqa: F401

PREFIX = "compression/"
QUANTIZATION_MODES = ("int8", "int16x8", "float16", "dynamic", None)
NO_QUANTIZATION = "none"  # keras-tuner's Choice takes no None

DEFAULT_COMPRESSION = {
    "sparsity": (0.0, 0.9, 0.1),
    "channels": 0.0,
    "clusters": 0,
    "float_layers": 0,
    "quantization": ["int8", "float16", "dynamic", None],
    "qat": [True, False],
    "prune_epochs": 2,
    "qat_epochs": 1,
    "teacher": None,
    "distillation": [False, True],
    "temperature": 4.0,
}

_RANGED = ("sparsity", "channels", "temperature")
_SEARCHABLE = ("sparsity", "channels", "clusters", "float_layers", "quantization", "qat", "prune_epochs", "qat_epochs", "distillation",
               "temperature")


def _values(key, value):
    """The candidate values of one key: a list (searched), a range tuple, or one value."""
    if isinstance(value, tuple) and key in _RANGED:
        if len(value) not in (2, 3) or not all(isinstance(v, (int, float)) for v in value):
            raise ValueError(f"`compression[{key!r}]` as a range must be (low, high) or (low, high, step) numbers, "
                             f"got {value!r}.")
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ValueError(f"`compression[{key!r}]` range {value!r} has low > high; write (low, high).")
        if len(value) == 3 and not value[2] > 0:
            raise ValueError(f"`compression[{key!r}]` range {value!r} needs a step > 0.")
        return [low, high]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _grid(low, high, step):
    """`low, low + step, ..., high` (the top included despite float rounding, unlike keras-tuner's stepped Float)."""
    count = int(round((high - low) / step)) + 1
    values = [round(low + i * step, 10) for i in range(count)]
    return [v for v in values if v <= high + 1e-9]


def _check_value(key, value):
    if key in ("sparsity", "channels"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
        fix = "a fraction in [0, 1), e.g. 0.5"
    elif key == "temperature":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        fix = "a number > 0, e.g. 4.0"
    elif key == "quantization":
        ok = value in QUANTIZATION_MODES or value == NO_QUANTIZATION
        fix = "one of 'int8', 'int16x8', 'float16', 'dynamic' or None"
    elif key == "clusters":
        ok = isinstance(value, int) and not isinstance(value, bool) and (value == 0 or value >= 3)
        fix = "0 (no clustering) or an integer >= 3 (one cluster may hold a pruned model's zeros), e.g. 16"
    elif key == "float_layers":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        fix = "an integer >= 0 (how many of the most int8-sensitive layers stay float), e.g. [0, 1, 2]"
    elif key in ("qat", "distillation"):
        ok = isinstance(value, bool)
        fix = "True or False (or [True, False] to search both)"
    else:  # epochs
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        fix = "an integer >= 1"
    if not ok:
        raise ValueError(f"`compression[{key!r}]` has the value {value!r}; it must be {fix}.")


def resolve_compression(compression):
    """Validates a compression space and fills in the defaults.

    Args:
        compression: a dict of the keys above (missing keys take their
            default), or None for `DEFAULT_COMPRESSION`.

    Returns:
        A new dict holding every key.

    Raises:
        ValueError: an unknown key, a value out of range, or an empty list.
        TypeError: `compression` is not a dict, or "teacher" is not a Keras model.

    Example:

    ```python
    space = kopt.search.resolve_compression({"sparsity": [0.0, 0.5], "quantization": "int8"})
    ```
    """
    if compression is None:
        compression = {}
    if not isinstance(compression, dict):
        raise TypeError(f"`compression` must be a dict such as {{'sparsity': [0.0, 0.5]}} or None, "
                        f"got {type(compression).__name__}.")
    unknown = sorted(set(compression) - set(DEFAULT_COMPRESSION))
    if unknown:
        raise ValueError(f"`compression` has unknown keys {unknown}; the keys are {sorted(DEFAULT_COMPRESSION)}.")
    space = {**DEFAULT_COMPRESSION, **compression}
    teacher = space["teacher"]
    if teacher is not None and not isinstance(teacher, keras.Model):
        raise TypeError(f"`compression['teacher']` must be a trained keras.Model, got {type(teacher).__name__}.")
    for key in _SEARCHABLE:
        values = _values(key, space[key])
        if not values:
            raise ValueError(f"`compression[{key!r}]` is an empty list; give at least one value.")
        for value in values:
            _check_value(key, value)
    return space


def declare(hp, space):
    """Declares the compression hyperparameters of `space` in `hp` (named "compression/<key>")."""
    def choose(key, **conditions):
        value = space[key]
        name = PREFIX + key
        if isinstance(value, tuple) and key in _RANGED:
            low, high = float(value[0]), float(value[1])
            if low == high:
                return hp.Fixed(name, low)
            if len(value) == 3:
                return hp.Choice(name, _grid(low, high, float(value[2])), ordered=True)
            return hp.Float(name, low, high)
        if isinstance(value, (list, tuple)):
            values = [NO_QUANTIZATION if v is None else (float(v) if key in _RANGED else v) for v in value]
            if len(values) == 1:
                return hp.Fixed(name, values[0])
            if all(isinstance(v, bool) for v in values):
                return hp.Boolean(name) if set(values) == {True, False} else hp.Fixed(name, values[0])
            return hp.Choice(name, values)
        return hp.Fixed(name, NO_QUANTIZATION if value is None else (float(value) if key in _RANGED else value))

    choose("sparsity")
    if isinstance(space["channels"], (list, tuple)) or space["channels"]:
        choose("channels")
    if isinstance(space["clusters"], (list, tuple)) or space["clusters"]:
        choose("clusters")
    choose("quantization")
    if "int8" in _values("quantization", space["quantization"]):
        with hp.conditional_scope(PREFIX + "quantization", ["int8"]):
            choose("qat")
            if isinstance(space["float_layers"], (list, tuple)) or space["float_layers"]:
                choose("float_layers")
    if space["teacher"] is not None:
        choose("distillation")
        if True in _values("distillation", space["distillation"]):
            with hp.conditional_scope(PREFIX + "distillation", [True]):
                choose("temperature")
    for key in ("prune_epochs", "qat_epochs"):  # searched only when given as a list
        if isinstance(space[key], (list, tuple)):
            choose(key)


def trial_compression(hyperparameters, space):
    """This trial's compression as plain values, from its hyperparameter values (inactive ones as defaults)."""
    values = dict(hyperparameters)

    def get(key):  # the trial's value, else the space's (first) value
        value = values.get(PREFIX + key, _values(key, space[key])[0])
        return None if value == NO_QUANTIZATION else value

    quantization = get("quantization")
    distillation = space["teacher"] is not None and bool(get("distillation"))
    return {
        "sparsity": float(get("sparsity")),
        "channels": float(get("channels")),
        "clusters": int(get("clusters")),
        "quantization": quantization,
        "qat": quantization == "int8" and bool(get("qat")),
        "float_layers": int(get("float_layers")) if quantization == "int8" else 0,
        "distillation": distillation,
        "temperature": float(get("temperature")) if distillation else None,
        "prune_epochs": int(get("prune_epochs")),
        "qat_epochs": int(get("qat_epochs")),
    }


def label(compression):
    """A short human label of a trial's compression, e.g. "50% sparse, int8 QAT"."""
    parts = [f"{compression['sparsity']:.0%} sparse" if compression["sparsity"] else "dense"]
    if compression.get("channels"):
        parts.insert(0, f"{compression['channels']:.0%} channels removed")
    if compression.get("clusters"):
        parts.append(f"{compression['clusters']} clusters")
    mode = compression["quantization"] or "float32"
    if mode == "int8":
        mode += " QAT" if compression["qat"] else " PTQ"
        if compression.get("float_layers"):
            mode += f", {compression['float_layers']} layer{'s' if compression['float_layers'] > 1 else ''} float"
    parts.append(mode)
    if compression.get("distillation"):
        parts.append(f"distilled T={compression['temperature']:g}")
    return ", ".join(parts)


def as_arrays(data, name):
    """`(x, y)` numpy arrays from a pair of arrays or a finite `tf.data.Dataset` of `(x, y)` batches."""
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        x, y = data[0], data[1]
        if len(x) != len(y):
            raise ValueError(f"`{name}` has {len(x)} inputs but {len(y)} labels.")
        return np.asarray(x), np.asarray(y)
    if hasattr(data, "as_numpy_iterator"):
        xs, ys = [], []
        for element in data.as_numpy_iterator():
            if not isinstance(element, tuple) or len(element) < 2:
                raise ValueError(f"`{name}` must yield (x, y) pairs to measure accuracy, got one element.")
            xs.append(element[0])
            ys.append(element[1])
        if not xs:
            raise ValueError(f"`{name}` is an empty dataset.")
        spec = data.element_spec[0]
        shape = getattr(spec, "shape", None)
        batched = shape[0] is None if shape is not None and shape.rank else np.ndim(ys[0]) >= 1
        return (np.concatenate(xs), np.concatenate(ys)) if batched else (np.stack(xs), np.stack(ys))
    raise ValueError(f"`{name}` must be `(x_val, y_val)` arrays or a tf.data.Dataset of (x, y) batches, "
                     f"got {type(data).__name__}.")
