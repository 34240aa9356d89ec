"""QAT of custom layers that hold convolutions and BatchNormalization (as KerasHub's MobileNet blocks do)."""

import keras
import numpy as np
import pytest

from kopt import convert, quantization
from kopt.datasets import load_digits
from tests.litert_truth import np_sqnr, only_output

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@keras.saving.register_keras_serializable(package="kopt_tests")
class ConvBlock(L.Layer):
    """Conv -> BatchNormalization -> ReLU -> depthwise Conv -> BatchNormalization, plus the input."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.expand = L.Conv2D(channels, 1, name="expand")
        self.expand_norm = L.BatchNormalization(name="expand_norm")
        self.depthwise = L.DepthwiseConv2D(3, padding="same", name="depthwise")
        self.depthwise_norm = L.BatchNormalization(name="depthwise_norm")

    def build(self, input_shape):
        inner = (*input_shape[:-1], self.channels)
        self.expand.build(input_shape)
        self.expand_norm.build(inner)
        self.depthwise.build(inner)
        self.depthwise_norm.build(inner)

    def call(self, x, training=None):
        h = keras.ops.relu(self.expand_norm(self.expand(x), training=training))
        return x + self.depthwise_norm(self.depthwise(h), training=training)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


def block_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same", activation="relu"),
                             ConvBlock(16, name="block"), L.GlobalAveragePooling2D(), L.Dense(10)])


def briefly_trained_qat(x, y):
    model = block_model()
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)  # a few steps: moving statistics far from batch ones
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    qat.fit(x, y, batch_size=64, epochs=1, verbose=0)
    return model, qat


def test_batch_normalization_inside_a_custom_layer_is_frozen_for_qat(tmp_path):
    (x, y), (x_test, _) = load_digits()
    model, qat = briefly_trained_qat(x, y)
    block = qat.get_layer("quant_block")
    assert isinstance(block.quantize_config, quantization.SublayerQuantizeConfig)
    norms = [block.layer.expand_norm, block.layer.depthwise_norm]
    assert not any(norm.trainable for norm in norms)
    assert model.get_layer("block").expand_norm.trainable  # the original model is left as it was
    result = convert.to_tflite(qat, representative_data=x[:200], validation_data=x_test)
    assert np_sqnr(qat.predict(x_test, verbose=0), only_output(result, x_test)) > 25
    qat.save(tmp_path / "qat.keras")
    loaded = keras.saving.load_model(tmp_path / "qat.keras")
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), qat.predict(x_test, verbose=0))
    assert not loaded.get_layer("quant_block").layer.expand_norm.trainable  # frozen again when loaded


def test_without_freezing_the_file_disagrees(monkeypatch):
    """The fault the freezing fixes: ranges learned on batch-normalized values do not fit the file."""
    (x, y), (x_test, _) = load_digits()
    monkeypatch.setattr(quantization.SublayerQuantizeConfig, "prepare", lambda self, layer: None)
    _, qat = briefly_trained_qat(x, y)
    assert qat.get_layer("quant_block").layer.expand_norm.trainable
    with pytest.raises(ValueError, match="does not match"):
        convert.to_tflite(qat, representative_data=x[:200], validation_data=x_test)
