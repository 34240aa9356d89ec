"""Offline distillation: the teacher's outputs computed once per training sample and reused every epoch."""

import keras
import numpy as np
import tensorflow as tf

from kopt._keras.datasets import epoch_variations

# Keys of the targets `Distiller.fit` passes on in cache mode: the user's labels and the cached outputs.
LABELS = "kopt_labels"
TEACHER = "kopt_teacher"


def split_targets(y):
    """`(labels, cached teacher outputs)` from the targets of a batch (either may be None)."""
    if isinstance(y, dict) and TEACHER in y:
        return y.get(LABELS), y[TEACHER]
    return y, None


def _pack(y, teacher):
    return {TEACHER: teacher} if y is None else {LABELS: y, TEACHER: teacher}


def _is_arrays(x):
    return all(isinstance(v, (np.ndarray, tf.Tensor)) or keras.ops.is_tensor(v) for v in keras.tree.flatten(x))


def attach(predict_batch, x, y, batch_size, verbose):
    """Computes the teacher's outputs for every sample of `x` once and attaches them to the targets.

    Args:
        predict_batch: a function from a batch of inputs to the teacher's outputs
            (a dict of tensors).
        x: what was given to `fit` as `x`: arrays (or a structure of arrays), or a
            `tf.data.Dataset` that yields the same batches every epoch.
        y: labels for arrays, or None (unlabelled transfer data); None for a dataset.
        batch_size: `fit`'s batch size for arrays (None: 32).
        verbose: 0 for silence, else a progress bar.

    Returns:
        `(x, y)` to give `fit` instead: the targets now carry the cached outputs,
        aligned with their samples however `fit` shuffles arrays.

    Raises:
        ValueError: for inputs whose epochs may differ (random ops, reshuffling,
            generators), or that never end.
    """
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError("`y` must be None when `x` is a tf.data.Dataset (the dataset yields the labels).")
        return _attach_to_dataset(predict_batch, x, verbose), None
    if x is None or not _is_arrays(x):
        raise ValueError(
            f"teacher_outputs='cache' needs inputs that are the same every epoch: NumPy arrays or a tf.data.Dataset "
            f"without random ops, got {type(x).__name__}. A Python generator or keras.utils.PyDataset can yield "
            f"anything, so kopt cannot cache its teacher outputs. Pass arrays, or use teacher_outputs='online'.")
    batch_size = batch_size or 32
    flat = [np.asarray(v) for v in keras.tree.flatten(x)]
    count = len(flat[0])
    progress = keras.utils.Progbar(count, unit_name="sample") if verbose else None
    chunks = []
    for start in range(0, count, batch_size):
        batch = keras.tree.pack_sequence_as(x, [v[start:start + batch_size] for v in flat])
        chunks.append(keras.tree.map_structure(keras.ops.convert_to_numpy, predict_batch(batch)))
        if progress:
            progress.update(min(start + batch_size, count))
    cached = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *chunks)
    return x, _pack(y, cached)


def _attach_to_dataset(predict_batch, dataset, verbose):
    reasons = epoch_variations(dataset)
    if reasons:
        raise ValueError(
            "teacher_outputs='cache' needs a tf.data pipeline that yields the same batches, in the same order, "
            "every epoch, but this one has: " + "; ".join(reasons) + ". Use teacher_outputs='online' (the teacher "
            "then sees each augmented batch), or cache before the random steps: pass the un-augmented data "
            "(shuffle(..., reshuffle_each_iteration=False) keeps one order).")
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "teacher_outputs='cache' needs a finite dataset (this one repeats forever): drop `.repeat()` and let "
            "`fit(epochs=...)` repeat it.")
    progress = keras.utils.Progbar(None, unit_name="batch") if verbose else None
    chunks, sizes = [], []
    for data in dataset:
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        chunks.append(keras.tree.map_structure(keras.ops.convert_to_numpy, predict_batch(x)))
        sizes.append(len(keras.tree.flatten(x)[0]))
        if progress:
            progress.add(1)
    if not chunks:
        raise ValueError("The dataset given to fit is empty.")
    if any(size != sizes[0] for size in sizes[:-1]) or sizes[-1] > sizes[0]:
        raise ValueError(
            "teacher_outputs='cache' needs batches of one size (the last may be smaller), got sizes "
            f"{sorted(set(sizes))}. Batch the dataset with `.batch(n)`.")
    cached = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *chunks)
    cached = tf.data.Dataset.from_tensor_slices(cached).batch(sizes[0])

    def pack(data, teacher):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        return keras.utils.pack_x_y_sample_weight(x, _pack(y, teacher), sample_weight)

    return tf.data.Dataset.zip((dataset, cached)).map(pack)
