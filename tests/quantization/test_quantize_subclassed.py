"""QAT of subclassed models: traced into a graph of their layers when `call` allows it, quantized whole otherwise."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kopt import convert, quantization
from kopt._keras.sublayers import all_sublayers
from kopt.datasets import load_digits
from kopt.quantization.layers import QuantizeLayer
from kopt.quantization.wrapper import QuantizeWrapper
from tests.litert_truth import np_sqnr, only_output
from custom_layers import ScaledSum

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@keras.saving.register_keras_serializable(package="kopt_tests")
class ResidualNet(keras.Model):
    """Conv -> BatchNormalization -> relu (keras.ops), a residual block, pooling and a list of Dense layers."""

    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.stem = L.Conv2D(16, 3, padding="same", use_bias=False)
        self.stem_norm = L.BatchNormalization()
        self.inner = L.Conv2D(16, 3, padding="same", activation="relu")
        self.pool = L.GlobalAveragePooling2D()
        self.dropout = L.Dropout(0.1)
        self.hidden = [L.Dense(32, activation="relu"), L.Dense(32, activation="relu")]
        self.head = L.Dense(classes)

    def call(self, x, training=None):
        x = keras.ops.relu(self.stem_norm(self.stem(x), training=training))
        x = x + self.inner(x)
        x = self.dropout(self.pool(x), training=training)
        for dense in self.hidden:
            x = dense(x)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


@keras.saving.register_keras_serializable(package="kopt_tests")
class TensorFlowOpNet(ResidualNet):
    """The same model with a TensorFlow op in `call`: it cannot be traced into Keras layers."""

    def call(self, x, training=None):
        return super().call(tf.identity(x), training=training)


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_test, y_test) = load_digits()
    return x, y, x_test


def _trained(model, digits):
    x, y, _ = digits
    keras.utils.set_random_seed(0)
    model.compile("adam", LOSS)
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    return model


def test_a_traceable_subclassed_model_is_quantized_layer_by_layer_and_converts_without_data(digits, tmp_path):
    model = _trained(ResidualNet(), digits)
    qat = quantization.quantize_model(model)
    wrapped = [layer.layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    # Every weighted layer of the model's call has a wrapper of its own; the BatchNormalization is folded.
    assert sum(isinstance(layer, L.Dense) for layer in wrapped) == 3
    assert sum(isinstance(layer, L.Conv2D) for layer in wrapped) == 2
    assert not any(isinstance(layer, L.BatchNormalization) for layer in qat.layers)
    assert isinstance(qat.layers[1], QuantizeLayer)
    # The user's model is left as it was.
    assert not any(isinstance(layer, QuantizeWrapper) for layer in all_sublayers(model))

    x, y, x_test = digits
    qat.compile("adam", LOSS)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    # QAT learned every range: no representative data needed.
    path = tmp_path / "net.tflite"
    convert.to_tflite(qat, path)
    reference = keras.ops.convert_to_numpy(qat(x_test, training=False))
    got = only_output(path.read_bytes(), x_test).reshape(reference.shape)
    assert np_sqnr(reference, got) > 30.0

    loaded = keras.models.load_model(_saved(qat, tmp_path))
    np.testing.assert_allclose(loaded.predict(x_test[:16], verbose=0), qat.predict(x_test[:16], verbose=0), atol=1e-6)


def _saved(model, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    return path


def test_an_untraceable_subclassed_model_is_quantized_whole(digits, tmp_path):
    model = _trained(TensorFlowOpNet(), digits)
    qat = quantization.quantize_model(model)
    (wrapper,) = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert isinstance(wrapper.layer, TensorFlowOpNet)
    assert wrapper.layer is not model
    # Its five kernels are fake-quantized through the layers it holds.
    assert len(wrapper.quantize_config.get_weights_and_quantizers(wrapper.layer)) == 5

    x, y, x_test = digits
    qat.compile("adam", LOSS)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    reference = keras.ops.convert_to_numpy(qat(x_test, training=False))
    content = convert.to_tflite(qat, representative_data=x[:200])
    assert np_sqnr(reference, only_output(content, x_test).reshape(reference.shape)) > 20.0


def test_subclassed_models_nested_in_a_functional_model_are_quantized(digits):
    inputs = keras.Input((8, 8, 1))
    traceable, untraceable = ResidualNet(name="traceable"), TensorFlowOpNet(name="untraceable")
    model = _trained(keras.Model(inputs, L.Average()([traceable(inputs), untraceable(inputs)])), digits)
    qat = quantization.quantize_model(model)
    # The traceable one becomes a nested graph of wrapped layers; the other is wrapped whole.
    graph = qat.get_layer("traceable")
    assert isinstance(graph, keras.Model) and type(graph) is not ResidualNet
    assert sum(isinstance(layer, QuantizeWrapper) for layer in graph.layers) >= 5
    whole = qat.get_layer("quant_untraceable")
    assert isinstance(whole.layer, TensorFlowOpNet) and whole.layer is not untraceable
    x, y, x_test = digits
    qat.compile("adam", LOSS)
    qat.fit(x, y, epochs=1, batch_size=64, verbose=0)
    reference = keras.ops.convert_to_numpy(qat(x_test, training=False))
    content = convert.to_tflite(qat, representative_data=x[:200])  # the whole-wrapped part needs data
    assert np_sqnr(reference, only_output(content, x_test).reshape(reference.shape)) > 20.0


@keras.saving.register_keras_serializable(package="kopt_tests")
class NoisyNet(ResidualNet):
    """A `call` that draws a Python random number: a traced graph would freeze one draw."""

    def call(self, x, training=None):
        return super().call(x, training=training) * float(np.random.uniform(0.5, 2.0))


def test_a_model_whose_traced_graph_computes_otherwise_is_quantized_whole(digits):
    model = _trained(NoisyNet(), digits)
    qat = quantization.quantize_model(model)
    (wrapper,) = [layer for layer in qat.layers if isinstance(layer, QuantizeWrapper)]
    assert isinstance(wrapper.layer, NoisyNet)


def test_an_unbuilt_subclassed_model_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="to_quantize.*not built.*call it on data once"):
        quantization.quantize_model(ResidualNet())


def test_a_weightless_custom_layer_is_traced_so_its_arithmetic_gets_ranges(digits, tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    branch = L.Conv2D(8, 1)(x)
    x = L.ReLU()(ScaledSum(0.2, name="scaled_sum")([x, branch]))
    model = _trained(keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x))), digits)
    qat = quantization.quantize_model(model)
    traced = qat.get_layer("scaled_sum")
    assert isinstance(traced, keras.Model) and type(traced) is not ScaledSum  # its two operations, each quantized
    x_train, y, x_test = digits
    qat.compile("adam", LOSS)
    qat.fit(x_train, y, epochs=1, batch_size=64, verbose=0)
    reference = keras.ops.convert_to_numpy(qat(x_test, training=False))
    content = convert.to_tflite(qat)  # no representative_data: the product inside has a QAT range
    assert np_sqnr(reference, only_output(content, x_test).reshape(reference.shape)) > 30.0


def test_untraced_the_same_layer_needs_representative_data(digits, monkeypatch):
    from kopt.quantization import _registry as registry

    monkeypatch.setattr(registry, "is_opaque", lambda layer: False)
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = L.ReLU()(ScaledSum(0.2, name="scaled_sum")([x, L.Conv2D(8, 1)(x)]))
    model = _trained(keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x))), digits)
    qat = quantization.quantize_model(model)
    assert isinstance(qat.get_layer("quant_scaled_sum"), QuantizeWrapper)
    x_train, y, _ = digits
    qat.compile("adam", LOSS)
    qat.fit(x_train, y, epochs=1, batch_size=64, verbose=0)
    with pytest.raises(ValueError, match="scaled_sum.*representative_data"):
        convert.to_tflite(qat)
