"""Initial cluster centroids, computed as tfmot computes them (the same values from the same weights).

Each initialization runs once per weight, eagerly, when a `ClusterWeights` wrapper is built. LINEAR, DENSITY_BASED
and KMEANS_PLUS_PLUS are deterministic and equal tfmot's (TensorFlow's k-means++ seeding op with tfmot's seed 9);
RANDOM draws from TensorFlow's global generator, as tfmot does.
"""

import numpy as np
import tensorflow as tf

from kopt.clustering.cluster_config import CentroidInitialization

_KMEANS_SEED = 9  # tfmot's
_DENSITY_GRID = 30  # tfmot's CDF grid: "a sufficiently large number", interpolated anyway


def _linear(weights, count, preserve_sparsity):
    if count <= 0:
        return tf.constant([], tf.float32)
    return tf.linspace(tf.reduce_min(weights), tf.reduce_max(weights), count)


def _random(weights, count, preserve_sparsity):
    return tf.random.uniform((count,), minval=tf.reduce_min(weights), maxval=tf.reduce_max(weights),
                             dtype=weights.dtype)


def _kmeans_plus_plus(weights, count, preserve_sparsity):
    if count <= 0:
        return tf.constant([], tf.float32)
    points = tf.reshape(weights, [-1, 1])
    # Fewer weights than clusters (a sign's share of a pruned kernel with preserve_sparsity): every weight is a
    # centroid, and the last is repeated (the repeats stay empty: a weight takes the first nearest centroid).
    sampled = min(count, int(points.shape[0]))
    centroids = tf.raw_ops.KmeansPlusPlusInitialization(
        points=points, num_to_sample=tf.constant(sampled, tf.int64), seed=tf.constant(_KMEANS_SEED, tf.int64),
        num_retries_per_sample=tf.constant(-1, tf.int64))
    centroids = tf.reshape(centroids, [sampled])
    return tf.concat([centroids, tf.repeat(centroids[-1:], count - sampled)], 0) if sampled < count else centroids


def _density_based(weights, count, preserve_sparsity):
    """Where the CDF of the weights, sampled on a 30-point grid, crosses `count` evenly spaced probabilities."""
    if count <= 0:
        return tf.constant([], tf.float32)
    low, high = tf.reduce_min(weights), tf.reduce_max(weights)
    gap = 0.01 if not preserve_sparsity else tf.minimum(0.01, tf.minimum(tf.abs(low), tf.abs(high)) / 2)
    grid = tf.linspace(low - gap, high + gap, _DENSITY_GRID).numpy()
    flat = tf.reshape(weights, [-1]).numpy()
    size = np.float32(flat.size)
    cdf = np.array([np.float32(np.count_nonzero(flat <= x)) / size for x in grid], np.float32)
    probabilities = tf.linspace(0 + 0.01, 1, count)
    indices = tf.searchsorted(cdf, tf.cast(probabilities, tf.float32), side="right").numpy()
    centroids = []
    for i in indices:
        i_clipped = min(int(i), cdf.size - 1)
        i_previous = max(0, i_clipped - 1)
        x1, x2, y1, y2 = grid[i_clipped], grid[i_previous], cdf[i_clipped], cdf[i_previous]
        if y2 == y1:
            centroids.append(x1)
        else:
            # tfmot's line through (x1, y1) and (x2, y2), solved for y1 (its arithmetic, in float32).
            run = np.maximum(np.float32(x2 - x1), np.float32(0.001))
            slope = np.float32(y2 - y1) / run
            intercept = y1 - x1 * (np.float32(y2 - y1) / run)
            centroids.append(np.float32(y1 - intercept) / slope)
    return tf.constant(np.asarray(centroids, np.float32).reshape(count))


_INITIALIZERS = {
    CentroidInitialization.LINEAR: _linear,
    CentroidInitialization.RANDOM: _random,
    CentroidInitialization.DENSITY_BASED: _density_based,
    CentroidInitialization.KMEANS_PLUS_PLUS: _kmeans_plus_plus,
}


def _with_zero_centroid(weights, count, initializer):
    """tfmot's sparsity-preserving initialization: one centroid at 0, the others shared by sign in proportion."""
    flat = tf.reshape(weights, [-1])
    negative = tf.boolean_mask(flat, flat < 0)
    positive = tf.boolean_mask(flat, flat > 0)
    nonzero = int(tf.size(negative)) + int(tf.size(positive))
    zero = tf.zeros((1,))
    if nonzero == 0:
        return zero
    negative_count = int(np.round((count - 1) * (int(tf.size(negative)) / nonzero)))
    positive_count = count - 1 - negative_count
    parts = [initializer(negative, negative_count, True), zero, initializer(positive, positive_count, True)]
    return tf.concat([tf.cast(p, tf.float32) for p in parts], axis=0)


def initial_centroids(weights, count, init, *, per_channel=False, preserve_sparsity=False):
    """The initial centroids of one weight, as tfmot computes them.

    Args:
        weights: the weight's values (array or tensor).
        count: the number of clusters.
        init: a `CentroidInitialization`.
        per_channel: centroids for each slice along the last axis (a Conv2D's output channels): shape
            `(channels, count)`.
        preserve_sparsity: one centroid is exactly 0 (in each channel).

    Returns:
        A float32 NumPy array of shape `(count,)` or `(channels, count)`. With `preserve_sparsity`, a weight with no
        nonzero value gets the single centroid `[0.]`.
    """
    weights = tf.convert_to_tensor(weights, tf.float32)
    initializer = _INITIALIZERS[CentroidInitialization(init)]

    def one(values):
        if preserve_sparsity:
            return _with_zero_centroid(values, count, initializer)
        return initializer(values, count, False)

    if per_channel:
        return np.stack([one(weights[..., c]).numpy() for c in range(weights.shape[-1])]).astype(np.float32)
    return one(weights).numpy().astype(np.float32)
