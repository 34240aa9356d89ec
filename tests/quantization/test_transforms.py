"""Graph transforms before QAT: BatchNormalization folding, affine layers as depthwise, integer forms."""

import keras
import numpy as np
import pytest

import kopt
from kopt.quantization import _transforms as transforms
from kopt.quantization import integer_form

L = keras.layers


def _built(layer, shape):
    layer.build(shape)
    return layer


def _random_batchnorm(channels, rng, shape=None):
    bn = _built(L.BatchNormalization(), shape or (None, 8, 8, channels))
    bn.set_weights([rng.uniform(0.5, 2, channels), rng.normal(size=channels), rng.normal(size=channels),
                    rng.uniform(0.5, 2, channels)])
    return bn


@pytest.mark.parametrize("make", [
    lambda: _built(L.Conv2D(6, 3), (None, 8, 8, 3)),
    lambda: _built(L.DepthwiseConv2D(3, depth_multiplier=2), (None, 8, 8, 3)),
    lambda: _built(L.SeparableConv2D(6, 3, depth_multiplier=2, use_bias=False), (None, 8, 8, 3)),
    lambda: _built(L.Dense(6), (None, 8, 8, 3)),
])
def test_folded_layer_computes_conv_then_batchnorm(make):
    rng = np.random.default_rng(0)
    producer = make()
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    y = producer(x)
    bn = _random_batchnorm(y.shape[-1], rng, shape=(None,) + tuple(y.shape[1:]))
    folded = transforms.folded_layer(producer, bn)
    np.testing.assert_allclose(folded(x), bn(y, training=False), atol=1e-4)


@pytest.mark.parametrize("make", [
    lambda rng: L.Rescaling(1 / 127.5, offset=-1.0),
    lambda rng: L.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 1.0, 0.25]),
    lambda rng: L.BatchNormalization(),
])
def test_affine_layers_become_one_depthwise_convolution(make):
    rng = np.random.default_rng(1)
    layer = make(rng)
    x = rng.uniform(0, 255, size=(2, 5, 5, 3)).astype("float32")
    layer(x)  # builds
    layer.set_weights([rng.uniform(0.5, 2, w.shape) for w in layer.weights])
    expected = layer(x, training=False) if isinstance(layer, L.BatchNormalization) else layer(x)
    depthwise = transforms.affine_as_depthwise(layer)
    assert isinstance(depthwise, L.DepthwiseConv2D) and depthwise.name == layer.name
    np.testing.assert_allclose(depthwise(x), expected, rtol=1e-5, atol=1e-4)
    layer_1d = make(rng)
    layer_1d(np.zeros((1, 3), "float32"))
    assert transforms.affine_as_depthwise(layer_1d) is None  # not an image: left as it is


def _ops(model):
    tflite = kopt.convert.to_tflite(model, quantization=None, validate=False)
    return kopt.convert.inspect(tflite).op_counts


def test_layer_normalization_integer_form_has_no_neg_op():
    inputs = keras.Input((4, 16))
    norm = L.LayerNormalization(name="norm")
    model = keras.Model(inputs, L.Dense(3)(norm(L.Dense(16)(inputs))))
    rng = np.random.default_rng(2)
    norm.set_weights([rng.uniform(0.5, 2, 16), rng.normal(size=16)])
    replacement = integer_form(norm)
    x = rng.normal(size=(3, 4, 16)).astype("float32") * 4 + 1
    np.testing.assert_allclose(replacement(x), norm(x), atol=1e-5)
    assert "NEG" in _ops(model)  # Keras's own lowering (what the issue measured)
    rewritten = kopt.quantization.with_integer_forms(model)
    np.testing.assert_allclose(rewritten(x), model(x), atol=1e-5)
    assert "NEG" not in _ops(rewritten) and "RSQRT" in _ops(rewritten)
    assert kopt.quantization.with_integer_forms(rewritten) is rewritten  # nothing left to replace
    assert integer_form(L.Dense(3)) is None
