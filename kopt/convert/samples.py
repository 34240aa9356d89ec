"""Checking and collecting sample data (representative / validation / analysis data) for a Keras model.

Samples are kept as one array per model input, in `model.inputs` order. A model
with several inputs takes, for every data argument, either a list/tuple of
arrays (in `model.inputs` order) or a dict keyed by input name (the name of the
`keras.Input`, or the key of a dict-structured model input); a
`tf.data.Dataset`, generator or iterable may yield such lists/dicts, or
`(inputs, targets)` pairs of them.
"""

import dataclasses
import itertools

import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One input of a Keras model: its name (the SavedModel signature key), other accepted names, shape, dtype."""

    name: str
    aliases: tuple
    shape: tuple  # batch dimension first
    dtype: str

    @property
    def is_integer(self):
        return np.issubdtype(np.dtype(self.dtype), np.integer) or np.dtype(self.dtype) == bool


def model_inputs(model):
    """The inputs of a built Keras model as `ModelInput`s, in `model.inputs` order.

    The name of each is the name of its `keras.Input` tensor, which is the key
    `model.export` gives it in the SavedModel signature (and which the .tflite
    signature keeps). When the model was built with a dict of inputs, the
    dict's keys are accepted too.
    """
    aliases = {}
    try:
        structure = model.input
    except (AttributeError, ValueError):  # a Sequential model that was never called
        structure = None
    if isinstance(structure, dict):
        for key, tensor in structure.items():
            aliases.setdefault(id(tensor), []).append(str(key))
    result = []
    for tensor in model.inputs:
        name = str(tensor.name)
        others = tuple(a for a in aliases.get(id(tensor), []) if a != name)
        result.append(ModelInput(name, others, tuple(tensor.shape), str(np.dtype(tensor.dtype).name)))
    return result


def _describe(inputs):
    return ", ".join(f"'{i.name}' {tuple(i.shape[1:])}" for i in inputs)


def _is_array(value):
    return isinstance(value, np.ndarray) or (hasattr(value, "__array__") and hasattr(value, "shape")
                                             and not hasattr(value, "__next__"))


def _from_dict(mapping, inputs, name):
    """Orders a dict of per-input values by `inputs`; any name in `ModelInput.aliases` counts."""
    values = []
    for spec in inputs:
        keys = [k for k in (spec.name, *spec.aliases) if k in mapping]
        if not keys:
            raise ValueError(
                f"`{name}` is a dict without the model input '{spec.name}'. Its keys are {sorted(map(str, mapping))}; "
                f"the model's inputs are {_describe(inputs)}: key the data by these names.")
        values.append(mapping[keys[0]])
    known = {k for spec in inputs for k in (spec.name, *spec.aliases)}
    unknown = sorted(str(k) for k in mapping if k not in known)
    if unknown:
        raise ValueError(f"`{name}` has keys {unknown} that are not inputs of the model ({_describe(inputs)}).")
    return values


def _split_element(element, inputs, name):
    """One element of an iterable -> a list with one value per model input (targets dropped)."""
    if isinstance(element, dict):
        return _from_dict(element, inputs, name)
    if isinstance(element, (tuple, list)) and element:
        first = element[0]
        if isinstance(first, (dict, tuple, list)):  # (inputs, targets[, weights])
            return _split_element(first, inputs, name)
        if len(inputs) == 1:
            # A sample given as a list of numbers, else (x, y[, w]) or [x] of a single-input model.
            return [element] if np.isscalar(first) else [first]
        if len(element) != len(inputs):
            raise ValueError(
                f"`{name}` yields {len(element)} values per element, but the model has {len(inputs)} inputs "
                f"({_describe(inputs)}). Yield one array per input (a list in model.inputs order, or a dict by name), "
                "or (inputs, targets) pairs.")
        return list(element)
    if len(inputs) > 1:
        raise ValueError(
            f"`{name}` yields single arrays, but the model has {len(inputs)} inputs ({_describe(inputs)}). "
            "Yield a list of arrays in model.inputs order, or a dict keyed by input name.")
    return [element]


def _check_and_cast(array, spec, name):
    if array.size == 0 or len(array) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one sample (100-500 are typical for calibration).")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == bool):
        raise ValueError(f"`{name}` must be numeric, got dtype {array.dtype}. Convert it, e.g. x.astype('float32').")
    expected = tuple(spec.shape[1:])
    got = array.shape[1:]
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ValueError(
            f"`{name}` has samples of shape {got}, but the model takes inputs of shape {expected} "
            f"(batch dimension excluded). Pass data shaped (n, {', '.join(str(d) for d in expected)}).")
    if spec.is_integer:
        if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
            if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                raise ValueError(f"`{name}` must hold whole numbers for the integer input '{spec.name}' "
                                 f"({spec.dtype}), got dtype {array.dtype} with fractional or NaN values.")
        return array.astype(spec.dtype)
    array = array.astype("float32")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite values: clean the data before converting.")
    return array


def collect_inputs(data, inputs, name, limit):
    """Returns up to `limit` samples of `data`: one array per model input, each `(n, *shape[1:])`.

    Args:
        data: for a single-input model, a numpy array (or array-like), a
            `tf.data.Dataset`, a generator or iterable of arrays / `(x, y)`
            pairs, or a callable returning one. For several inputs, a list of
            arrays (in `model.inputs` order) or a dict keyed by input name, or a
            dataset / generator / iterable yielding such lists or dicts (single
            samples or batches), or `(inputs, targets)` pairs of them.
        inputs: the model's inputs, from `model_inputs(model)`.
        name: the argument's name, for error messages.
        limit: the most samples to take.

    Returns:
        A list of arrays, one per input, all with the same number of samples
        (float32 for float inputs, the input's dtype for integer inputs).

    Raises:
        ValueError: empty data, missing or unknown inputs, wrong shape,
            non-numeric dtype, or NaN/inf values.
    """
    if data is None:
        raise ValueError(f"`{name}` is None.")
    if callable(data) and not hasattr(data, "shape"):
        data = data()
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    columns = None
    if isinstance(data, dict):
        columns = [np.asarray(v) for v in _from_dict(data, inputs, name)]
    elif len(inputs) > 1 and isinstance(data, (tuple, list)) and len(data) == len(inputs) and all(
            _is_array(v) and np.ndim(v) == len(s.shape) for v, s in zip(data, inputs)):
        columns = [np.asarray(v) for v in data]
    elif _is_array(data):
        if len(inputs) > 1:
            raise ValueError(
                f"`{name}` is one array, but the model has {len(inputs)} inputs ({_describe(inputs)}). Pass a list "
                "of arrays in model.inputs order, or a dict keyed by input name.")
        array = np.asarray(data)
        columns = [array[None] if array.ndim == len(inputs[0].shape) - 1 else array]
    if columns is not None:
        columns = [c[None] if c.ndim == len(s.shape) - 1 else c for c, s in zip(columns, inputs)]
        counts = {len(c) for c in columns}
        if len(counts) > 1:
            raise ValueError(f"`{name}` has a different number of samples per input "
                             f"({dict(zip([s.name for s in inputs], [len(c) for c in columns]))}): give each the same.")
        columns = [c[:limit] for c in columns]
    else:
        columns = _collect_iterable(data, inputs, name, limit)
    return [_check_and_cast(c, s, _label(name, s, inputs)) for c, s in zip(columns, inputs)]


def _label(name, spec, inputs):
    return name if len(inputs) == 1 else f"{name}['{spec.name}']"


def _collect_iterable(data, inputs, name, limit):
    try:
        iterator = iter(data)
    except TypeError:
        raise ValueError(f"`{name}` must be an array, a list/dict of arrays, a tf.data.Dataset, a generator or an "
                         f"iterable of samples, got {type(data).__name__}.") from None
    columns = [[] for _ in inputs]
    count = 0
    for element in itertools.islice(iterator, limit):
        values = [np.asarray(v) for v in _split_element(element, inputs, name)]
        batched = {v.ndim == len(s.shape) for v, s in zip(values, inputs)}
        if len(batched) > 1:
            raise ValueError(f"`{name}` mixes single samples and batches across inputs in one element.")
        if batched.pop():
            sizes = {len(v) for v in values}
            if len(sizes) > 1:
                raise ValueError(f"`{name}` yields batches of different sizes per input ({sorted(sizes)}).")
            for column, value in zip(columns, values):
                column.extend(value[: limit - count])
            count += min(sizes.pop(), limit - count)
        else:
            for column, value in zip(columns, values):
                column.append(value)
            count += 1
        if count >= limit:
            break
    if not count:
        raise ValueError(f"`{name}` is empty: pass at least one sample (100-500 are typical for calibration).")
    result = []
    for column, spec in zip(columns, inputs):
        shapes = {c.shape for c in column}
        if len(shapes) != 1:
            raise ValueError(f"`{_label(name, spec, inputs)}` has samples of different shapes {sorted(shapes)}; "
                             f"expected {tuple(spec.shape[1:])}.")
        result.append(np.stack(column))
    return result


def count(samples):
    """Number of samples in a list of per-input arrays."""
    return len(samples[0])


def take(samples, start, stop=None):
    """Samples `start:stop` of a list of per-input arrays."""
    return [s[start:stop] for s in samples]


def synthetic_inputs(inputs, count, ranges=None, seed=0):
    """Random samples for each input: uniform in `ranges[i]` (default [0, 1)); integer inputs get 0 or 1.

    Args:
        inputs: the model's inputs, from `model_inputs(model)`.
        count: samples per input.
        ranges: optional list of `(low, high)` per input (None entries: the default).
        seed: random seed.

    Returns:
        A list of arrays, one per input.
    """
    rng = np.random.default_rng(seed)
    result = []
    for i, spec in enumerate(inputs):
        shape = (count,) + tuple(d if d is not None else 1 for d in spec.shape[1:])
        if spec.is_integer:
            result.append(rng.integers(0, 2, size=shape).astype(spec.dtype))
            continue
        low, high = (ranges[i] if ranges is not None and ranges[i] is not None else (0.0, 1.0))
        result.append(rng.uniform(low, high, size=shape).astype("float32"))
    return result


def pack_for_call(model, samples):
    """Per-input arrays (in `model.inputs` order) -> the structure `model(...)` takes (array, list or dict)."""
    try:
        structure = model.input
    except (AttributeError, ValueError):  # a Sequential model that was never called
        structure = None
    if isinstance(structure, dict):
        ids = [id(t) for t in model.inputs]
        return {key: samples[ids.index(id(tensor))] for key, tensor in structure.items()}
    if len(samples) == 1 and not isinstance(structure, (list, tuple)):
        return samples[0]
    return list(samples)


def run_in_batches(call, inputs, batch_size):
    """Runs `call` on consecutive batches of `inputs` and concatenates what it returns, output by output.

    Args:
        call: a function from `{input name: batch}` to `{output name: array}` (a runtime's one invocation).
        inputs: `{input name: array}`, all with the same number of samples.
        batch_size: samples per call.

    Returns:
        `{output name: array}` over all the samples, in the order `call` returns the outputs.
    """
    total = len(next(iter(inputs.values())))
    results = {}
    for start in range(0, total, batch_size):
        for name, y in call({name: x[start:start + batch_size] for name, x in inputs.items()}).items():
            results.setdefault(name, []).append(y)
    return {name: np.concatenate(parts) for name, parts in results.items()}


def check_convertible(model, path, on_mismatch, max_samples):
    """The checks `to_tflite` and `to_onnx` share: a built Keras model with known, non-string inputs, and options.

    Raises:
        ValueError: naming the argument and the fix.
    """
    import keras

    from kopt._keras.inputs import reject_string_inputs
    from kopt.convert._files import check_folder

    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a Keras 3 keras.Model, got {type(model).__module__}.{type(model).__name__}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"`model` ('{model.name}') must be built with known inputs: give it a keras.Input (e.g. "
            "keras.Sequential([keras.Input((8,)), ...]) or a Functional model), so its input signature is known.")
    reject_string_inputs(model, "model", "convert")
    if on_mismatch not in ("raise", "warn"):
        raise ValueError(f"`on_mismatch` must be 'raise' or 'warn', got {on_mismatch!r}.")
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
        raise ValueError(f"`max_samples` must be a positive integer, got {max_samples!r}.")
    if path is not None:
        check_folder(path)


def as_input_list(x, inputs):
    """Samples `x` (an array, a list of arrays in `inputs` order, or a dict keyed by input name) as a list."""
    if isinstance(x, list) and len(x) == len(inputs) and all(isinstance(a, np.ndarray) for a in x):
        return x
    return collect_inputs(x, inputs, "x", np.iinfo("int64").max)


def layers_named_in(model, names):
    """The names of `model`'s layers that tensor or node names of its converted file carry, in first-seen order.

    Both converters name a file's tensors and nodes by the graph path of the op that made them, e.g.
    `functional/dense/MatMul;functional/dense/BiasAdd`: a Keras layer's name is one component of it, or that name
    with a `_N` suffix when the export traced the layer again (TensorFlow makes each name scope unique).
    """
    import re

    from kopt._keras.clone import walk_layers

    known = {layer.name for layer in walk_layers(model)}
    found = []
    for name in names:
        for part in re.split(r"[/;:]", name):
            if part not in known:
                part = re.sub(r"_\d+$", "", part)
            if part in known and part not in found:
                found.append(part)
    return found
