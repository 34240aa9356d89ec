"""Model rewriting shared by every technique: plain operations, Lambda layers, nesting."""

import keras
import numpy as np
import pytest

import kopt
from kopt._keras.clone import copy_layer, rewrite_model
from litert_truth import np_sqnr, only_output  # tests/litert_truth.py (tests/ is on sys.path: conftest)

L = keras.layers


def _graph_with_operations():
    inputs = keras.Input((8,), name="features")
    h = L.Dense(8, name="dense")(inputs)
    h = h + inputs                                           # a plain operation (not a layer)
    h = keras.ops.mean(h, axis=-1, keepdims=True) * h        # two more
    h = L.Lambda(lambda t: t * 2.0, name="double")(h)        # a Python lambda: from_config refuses it
    h = keras.ops.reshape(h, (-1, 2, 4))
    return keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(h)))


def test_operations_and_lambdas_are_carried_over():
    model = _graph_with_operations()
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    clone = rewrite_model(model, copy_layer)
    np.testing.assert_allclose(clone(x), model(x), atol=1e-6)
    assert clone.inputs[0].name == "features"
    assert not {id(v) for v in clone.weights} & {id(v) for v in model.weights}  # no shared variables


def test_pruning_and_stripping_a_graph_with_operations():
    model = _graph_with_operations()
    pruned = kopt.sparsity.prune_low_magnitude(
        model, pruning_schedule=kopt.sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    pruned.fit(x, np.zeros((32, 3)), verbose=0, callbacks=[kopt.sparsity.UpdatePruningStep()])
    stripped = kopt.sparsity.strip_pruning(pruned)
    for name in ("dense", "head"):
        kernel = keras.ops.convert_to_numpy(stripped.get_layer(name).kernel)
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=0.02)
    np.testing.assert_allclose(stripped(x), pruned(x), atol=1e-5)


def test_qat_quantizes_operations_like_their_layer_forms():
    model = _graph_with_operations()
    qat = kopt.quantization.quantize_model(model)
    names = [layer.name for layer in qat.layers]
    # add, mean, multiply and the Lambda get an output range; the reshape keeps its input's.
    quantized = [n for n in names if n.startswith("quant_") and isinstance(qat.get_layer(n),
                                                                           kopt.quantization.QuantizeLayer)]
    assert len(quantized) == 4 and any("double" in n for n in quantized)
    assert not any("reshape" in n for n in quantized)
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, model.predict(x, verbose=0), verbose=0, epochs=2)
    tflite = kopt.convert.to_tflite(qat, validation_data=x)  # full int8, or it raises
    # Independently of kopt's validation: the file (LiteRT) follows the QAT model.
    reference = keras.ops.convert_to_numpy(qat(x, training=False)).astype("float64")
    got = np.asarray(only_output(tflite, x), "float64").reshape(reference.shape)
    assert np_sqnr(reference, got) > 25.0


class Inner(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(4)

    def call(self, x):
        return self.dense(x)


def test_a_nested_subclassed_model_is_copied_like_a_custom_layer():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2)(Inner(name="inner")(inputs)))
    seen = []

    def copy(layer):
        seen.append(layer.name)
        return copy_layer(layer)

    clone = rewrite_model(model, copy)
    assert "inner" in seen
    assert type(clone.get_layer("inner")) is Inner
    assert not {id(v) for v in clone.weights} & {id(v) for v in model.weights}
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(clone(x), model(x), atol=1e-6)