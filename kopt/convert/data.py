"""Checking and collecting sample data (representative / validation) for conversion."""

import itertools

import numpy as np


def _first_item(element):
    # A dataset of (x, y) or (x, y, sample_weight) pairs: keep x.
    if isinstance(element, (tuple, list)) and element and not np.isscalar(element[0]):
        return element[0]
    if isinstance(element, dict):
        raise ValueError("dict samples are not supported: pass the model's input array, or (x, y) pairs")
    return element


def collect_samples(data, input_shape, name, limit):
    """Returns up to `limit` samples of `data` as one float32 array of shape `(n, *input_shape[1:])`.

    Args:
        data: a numpy array (or array-like), a `tf.data.Dataset`, a generator or
            iterable of arrays / `(x, y)` pairs, or a callable returning one.
        input_shape: the model's input shape, batch dimension first (None allowed).
        name: the argument's name, for error messages.
        limit: the most samples to take.

    Raises:
        ValueError: empty data, wrong shape, non-numeric dtype, or NaN/inf values.
    """
    if data is None:
        raise ValueError(f"`{name}` is None.")
    if callable(data) and not hasattr(data, "shape"):
        data = data()
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        data = data.unbatch() if _is_batched(data, input_shape) else data
        data = data.take(limit).as_numpy_iterator()
    if isinstance(data, np.ndarray) or hasattr(data, "__array__") and not hasattr(data, "__next__"):
        array = np.asarray(data)
        if array.ndim == len(input_shape) - 1:
            array = array[None]
        array = array[:limit]
    else:
        items = []
        for element in itertools.islice(iter(data), limit):
            item = np.asarray(_first_item(element))
            if item.ndim == len(input_shape):  # a batch
                items.extend(item[: limit - len(items)])
            else:
                items.append(item)
            if len(items) >= limit:
                break
        if not items:
            raise ValueError(f"`{name}` is empty: pass at least one sample (100-500 are typical for calibration).")
        shapes = {i.shape for i in items}
        if len(shapes) != 1:
            raise ValueError(f"`{name}` has samples of different shapes {sorted(shapes)}; expected {tuple(input_shape[1:])}.")
        array = np.stack(items)
    if array.size == 0 or len(array) == 0:
        raise ValueError(f"`{name}` is empty: pass at least one sample (100-500 are typical for calibration).")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == bool):
        raise ValueError(f"`{name}` must be numeric, got dtype {array.dtype}. Convert it, e.g. x.astype('float32').")
    expected = tuple(input_shape[1:])
    got = array.shape[1:]
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        raise ValueError(
            f"`{name}` has samples of shape {got}, but the model takes inputs of shape {expected} "
            f"(batch dimension excluded). Pass data shaped (n, {', '.join(str(d) for d in expected)}).")
    array = array.astype("float32")
    if not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite values: clean the data before converting.")
    return array


def _is_batched(dataset, input_shape):
    spec = dataset.element_spec
    if isinstance(spec, (tuple, list)):
        spec = spec[0]
    return len(spec.shape) == len(input_shape)
