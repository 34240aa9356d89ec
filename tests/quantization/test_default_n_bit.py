"""DefaultNBitQuantizeScheme: 4-bit weights in QAT are at most 16 int8 values per channel/tensor in the file."""

import keras
import numpy as np
import pytest

from kopt import convert, quantization
from kopt.errors import ConversionError
from kopt.quantization.experimental.default_n_bit import DefaultNBitQuantizeScheme
from tests.quantization.int8_weights import distinct_per_channel, int8_weights


def _cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, name="depthwise"),
        keras.layers.Flatten(),
        keras.layers.Dense(4, name="dense"),
    ])


def _qat(scheme):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 3)).astype("float32"), np.arange(64) % 4
    qat = quantization.quantize_model(_cnn(), quantize_scheme=scheme)
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return qat, x


def _distinct(content):
    """Distinct int8 values of each kernel of the file, per channel for per-axis ones (max over channels)."""
    return sorted(max(distinct_per_channel(values, axis, scales)) for _, values, axis, scales in int8_weights(content))


@pytest.mark.parametrize("disable_per_axis", [False, True])
def test_4_bit_weights_are_at_most_16_int8_values_per_channel_in_the_file(disable_per_axis):
    qat, x = _qat(DefaultNBitQuantizeScheme(disable_per_axis=disable_per_axis, num_bits_weight=4))
    wrapper = qat.get_layer("quant_dense")
    assert wrapper.quantize_config.get_weights_and_quantizers(wrapper.layer)[0][1].num_bits == 4
    content = convert.to_tflite(qat, validation_data=x)
    counts = _distinct(content)
    assert len(counts) == 3 and max(counts) <= 16, counts  # conv, depthwise, dense
    assert all(np.abs(values).max() <= 7 for _, values, _, _ in int8_weights(content))  # the 4-bit grid -7..7
    eight, x = _qat(DefaultNBitQuantizeScheme(disable_per_axis=disable_per_axis))  # 8 bits: the check can fail
    assert max(_distinct(convert.to_tflite(eight, validation_data=x))) > 16


def test_activation_bits_reach_every_activation_quantizer():
    scheme = DefaultNBitQuantizeScheme(num_bits_weight=6, num_bits_activation=7)
    qat = quantization.quantize_model(_cnn(), quantize_scheme=scheme)
    assert qat.layers[0].quantizer.num_bits == 7  # the input
    conv = qat.get_layer("quant_conv")
    config = conv.quantize_config
    assert [q.num_bits for _, q in config.get_weights_and_quantizers(conv.layer)] == [6]
    assert [q.num_bits for _, q in config.get_activations_and_quantizers(conv.layer)] == [7]


def test_4_bit_activations_do_not_convert_as_the_docstring_says():
    qat, x = _qat(DefaultNBitQuantizeScheme(num_bits_weight=8, num_bits_activation=4))
    with pytest.raises(ConversionError, match="i4"):
        convert.to_tflite(qat, validation_data=x)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_bits_weight": 16}, "num_bits_weight"), ({"num_bits_activation": 1}, "num_bits_activation"),
    ({"num_bits_weight": 4.0}, "num_bits_weight")])
def test_bad_bit_widths_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DefaultNBitQuantizeScheme(**kwargs)
