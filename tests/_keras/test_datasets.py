"""kopt._keras.datasets.epoch_variations: what makes a tf.data pipeline differ between epochs."""

import keras
import numpy as np
import tensorflow as tf

from kopt._keras.datasets import epoch_variations

DATA = tf.data.Dataset.from_tensor_slices((np.zeros((8, 4), "float32"), np.zeros(8, "int64")))


def test_a_fixed_pipeline_has_no_variations():
    fixed = DATA.shuffle(8, seed=0, reshuffle_each_iteration=False).map(lambda x, y: (x * 2.0, y)).batch(4).prefetch(1)
    assert epoch_variations(fixed) == []
    first, second = [[b[0].numpy() for b in fixed] for _ in range(2)]
    np.testing.assert_array_equal(first, second)


def test_each_source_of_variation_is_named():
    flip = keras.layers.RandomFlip()
    cases = {
        "reshuffle_each_iteration=True": DATA.shuffle(8),
        "RandomUniform": DATA.map(lambda x, y: (x + tf.random.uniform((4,)), y)),
        "StatelessRandom": DATA.map(lambda x, y: (tf.image.stateless_random_flip_left_right(
            tf.reshape(x, (2, 2, 1)), seed=(1, 2)), y)),
        "Random": DATA.batch(2).map(lambda x, y: (flip(tf.reshape(x, (2, 2, 2, 1)), training=True), y)),
        "deterministic=False": DATA.map(lambda x, y: (x, y), num_parallel_calls=2, deterministic=False),
        "generator": tf.data.Dataset.from_generator(lambda: iter([np.zeros(3)]),
                                                    output_signature=tf.TensorSpec((3,), tf.float64)),
    }
    for expected, dataset in cases.items():
        reasons = epoch_variations(dataset)
        assert any(expected in reason for reason in reasons), (expected, reasons)
