"""Mask computation for magnitude pruning: unstructured, block and m-by-n.

Pure functions of a weight tensor, written with `keras.ops`; they reproduce
tfmot's `pruning_impl` (same threshold rule, same tie handling), which the
oracle tests check mask for mask.
"""

import math

from keras import ops


def magnitude_mask(weight, sparsity):
    """Keeps the `round(size * (1 - sparsity))` largest-magnitude entries (at least 1).

    Entries tied with the threshold are kept, like tfmot.

    Args:
        weight: a tensor.
        sparsity: scalar float tensor in [0, 1).

    Returns:
        `(threshold, mask)`: the magnitude threshold and a 0/1 mask of `weight`'s
        shape and dtype.
    """
    shape = tuple(weight.shape)
    size = math.prod(shape)
    magnitudes = ops.abs(weight)
    k = ops.cast(ops.maximum(ops.round(ops.cast(size, "float32") * (1.0 - sparsity)), 1.0), "int32")
    values, indices = ops.top_k(ops.reshape(magnitudes, (-1,)), k=size)
    threshold = ops.take(values, k - 1)
    threshold_position = ops.take(indices, k - 1)
    keep = ops.logical_or(
        ops.greater_equal(magnitudes, threshold),
        ops.reshape(ops.equal(ops.arange(size, dtype="int32"), threshold_position), shape),
    )
    return ops.cast(threshold, weight.dtype), ops.cast(keep, weight.dtype)


def block_mask(weight, sparsity, block_size, pooling):
    """Prunes whole `block_size` blocks of a 2-D weight, ranked by their AVG or MAX magnitude.

    As in tfmot, a weight whose dimensions are not multiples of `block_size` is pooled with "SAME"
    padding (an AVG block averages only the weights it holds) and the block mask is cropped to the
    weight (mask identical to tfmot's, checked in tests/sparsity/test_masks.py).

    Args:
        weight: a rank-2 tensor.
        sparsity: scalar float tensor in [0, 1).
        block_size: `(block_height, block_width)`.
        pooling: "AVG" or "MAX".

    Returns:
        `(threshold, mask)` as in `magnitude_mask`.
    """
    rows, cols = weight.shape
    block_rows, block_cols = block_size
    padded_rows, padded_cols = -(-rows // block_rows) * block_rows, -(-cols // block_cols) * block_cols
    # TensorFlow's "SAME" padding, which tfmot pools with, splits the padding between both ends
    # (floor at the start); the mask is then expanded from the first row/column and cropped, as in tfmot.
    padding = tuple(((total // 2), total - total // 2) for total in (padded_rows - rows, padded_cols - cols))
    magnitudes = ops.pad(ops.abs(weight), padding)  # zeros: they change no MAX, and AVG divides them out
    valid = ops.pad(ops.ones_like(weight), padding)

    def pool_rows_then_columns(values, reduce):
        # Rows first, then columns, as tfmot's factorized pooling does.
        pooled = reduce(ops.reshape(values, (padded_rows // block_rows, block_rows, padded_cols)), axis=1)
        return reduce(ops.reshape(pooled, (padded_rows // block_rows, padded_cols // block_cols, block_cols)), axis=2)

    if pooling == "AVG":
        pooled = pool_rows_then_columns(magnitudes, ops.sum) / pool_rows_then_columns(valid, ops.sum)
    else:
        pooled = pool_rows_then_columns(magnitudes, ops.max)
    threshold, pooled_mask = magnitude_mask(pooled, sparsity)
    mask = ops.repeat(ops.repeat(pooled_mask, block_rows, axis=0), block_cols, axis=1)
    return threshold, mask[:rows, :cols]


def _to_m_by_n_layout(weight):
    # TFLite's layout puts the input channel last: Dense [in, out] -> [out, in];
    # Conv [h, w, in, out] -> [out * h * w, in]. m-by-n runs along that last axis.
    if len(weight.shape) == 2:
        return ops.transpose(weight)
    return ops.reshape(ops.transpose(weight, (3, 0, 1, 2)), (-1, weight.shape[2]))


def _from_m_by_n_layout(mask, shape):
    if len(shape) == 2:
        return ops.transpose(mask)
    return ops.transpose(ops.reshape(mask, (shape[3], shape[0], shape[1], shape[2])), (1, 2, 3, 0))


def m_by_n_mask(weight, m_by_n):
    """Zeros the `m` smallest-magnitude values of every `n` consecutive input-channel values.

    Args:
        weight: a rank-2 (Dense-like) or rank-4 (Conv2D-like) tensor whose input
            channel count is a multiple of `n`.
        m_by_n: `(m, n)`, e.g. `(2, 4)` for 2:4 sparsity.

    Returns:
        `(threshold, mask)`; the threshold is 0 (m-by-n has no single threshold).
    """
    m, n = m_by_n
    shape = tuple(weight.shape)
    prepared = ops.abs(_to_m_by_n_layout(weight))
    blocks = ops.reshape(prepared, (-1, n))
    _, keep_indices = ops.top_k(blocks, k=n - m)
    block_mask_ = ops.sum(ops.one_hot(keep_indices, n, dtype=weight.dtype), axis=1)
    mask = _from_m_by_n_layout(ops.reshape(block_mask_, prepared.shape), shape)
    return ops.zeros((), dtype=weight.dtype), mask
