"""QuantizeWrapper keeps what the layer does: its activation (without touching the caller's
layer), its activity regularizer and `add_loss` losses; and the QAT model still matches its int8 file."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from keras import layers as L
from keras import ops

from kopt import convert, quantization
from kopt.datasets import load_digits
from litert_truth import litert, np_sqnr, output_scale

L1 = 0.05
PENALTY = 0.1


@keras.saving.register_keras_serializable(package="kopt_tests")
class KernelOnly(quantization.QuantizeConfig):
    """tfmot-style custom config: 8-bit kernel, activation and output left alone."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, quantization.LastValueQuantizer(
            num_bits=8, per_axis=False, symmetric=True, narrow_range=True))]

    def get_activations_and_quantizers(self, layer):
        return []

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="kopt_tests")
class ActivationToo(KernelOnly):
    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, quantization.MovingAverageQuantizer(
            num_bits=8, per_axis=False, symmetric=False, narrow_range=False))]


@keras.saving.register_keras_serializable(package="kopt_tests")
class PenalizedDense(L.Dense):
    """A Dense that adds `PENALTY * mean(output ** 2)` with add_loss."""

    def call(self, inputs):
        outputs = super().call(inputs)
        self.add_loss(PENALTY * ops.mean(ops.square(outputs)))
        return outputs


def _sqnr_db(reference, test):
    return 10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - test) ** 2), 1e-30))


# ---------------------------------------------------------------- the caller's layer


def test_the_callers_layer_keeps_its_activation_through_build_call_fit_and_save(tmp_path):
    dense = L.Dense(4, activation="tanh", activity_regularizer=keras.regularizers.L1(L1), name="d")
    wrapper = quantization.QuantizeWrapper(dense, ActivationToo())
    assert wrapper.layer is dense and wrapper.activation is keras.activations.tanh
    model = keras.Sequential([keras.Input((6,)), wrapper])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.normal(size=(32, 4)).astype("float32")
    model(x)
    model.compile("adam", "mse")
    model.fit(x, y, batch_size=8, verbose=0)
    assert dense.activation is keras.activations.tanh
    assert isinstance(dense.activity_regularizer, keras.regularizers.L1)
    assert dense.get_config()["activation"] == "tanh"

    # tanh applied exactly once, by the wrapper, after the weights' fake quantization.
    pre = x @ ops.convert_to_numpy(dense.kernel) + ops.convert_to_numpy(dense.bias)
    got = model.predict(x, verbose=0)
    once, twice, never = (_sqnr_db(np.tanh(pre), got), _sqnr_db(np.tanh(np.tanh(pre)), got),
                          _sqnr_db(pre, got))
    assert once > 30 and twice < once - 10 and never < once - 10

    path = os.fspath(tmp_path / "qat.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.layers[0].layer.activation is keras.activations.tanh
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), got)


def test_an_error_inside_the_call_restores_the_layer():
    dense = L.Dense(4, activation="relu")
    wrapper = quantization.QuantizeWrapper(dense, ActivationToo())
    wrapper(np.zeros((2, 6), "float32"))
    with pytest.raises(ValueError):
        wrapper(np.zeros((2, 5), "float32"))  # the Dense's input check fails inside the call
    assert dense.activation is keras.activations.relu


def test_files_saved_with_the_activation_on_the_wrapper_still_load():
    """Earlier kopt saved the layer with a linear activation and the wrapper with the real one."""
    wrapper = quantization.QuantizeWrapper(L.Dense(4, activation="relu", name="d"), ActivationToo())
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    expected = ops.convert_to_numpy(wrapper(x))
    config = wrapper.get_config()
    assert "activation" not in config and config["layer"]["config"]["activation"] == "relu"
    config["layer"]["config"]["activation"] = "linear"
    config["activation"] = "relu"
    old = quantization.QuantizeWrapper.from_config(config)
    old(x)
    old.set_weights(wrapper.get_weights())
    assert old.layer.activation is keras.activations.relu and old.activation is keras.activations.relu
    np.testing.assert_array_equal(ops.convert_to_numpy(old(x)), expected)


# ---------------------------------------------------------------- losses


def _regularized_model():
    keras.utils.set_random_seed(4)
    return keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="relu", activity_regularizer=keras.regularizers.L1(L1), name="hidden"),
        quantization.quantize_annotate_layer(PenalizedDense(3, name="out"), quantize_config=KernelOnly()),
    ])


def test_activity_regularizer_and_add_loss_survive_qat():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
    plain = keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="relu", activity_regularizer=keras.regularizers.L1(L1), name="hidden"),
        PenalizedDense(3, name="out"),
    ])
    plain(x)
    assert len(plain.losses) == 2
    qat = quantization.quantize_apply(quantization.quantize_annotate_model(_regularized_model()))
    qat.compile(keras.optimizers.SGD(0.0), "mse")
    qat.fit(x, y, batch_size=len(x), verbose=0)  # one step sets the activation ranges
    for _ in range(2):
        out = ops.convert_to_numpy(qat(x))
    assert len(qat.losses) == 2  # not 0 (dropped) and not 3 (the inner activity loss counted again)
    values = sorted(float(v) for v in qat.losses)

    hidden = x
    for layer in qat.layers[:qat.layers.index(qat.get_layer("quant_hidden")) + 1]:
        hidden = layer(hidden)
    hidden = ops.convert_to_numpy(hidden)
    activity = L1 * np.abs(hidden).sum() / len(x)  # on the wrapper's (quantized, post-ReLU) output
    penalty = PENALTY * np.mean(out ** 2)
    assert values == pytest.approx(sorted([activity, penalty]), rel=1e-5)
    expected = np.mean((out - y) ** 2) + activity + penalty
    assert qat.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(expected, rel=1e-5)
    history = qat.fit(x, y, batch_size=len(x), verbose=0)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-3)  # training ranges: one more step


def _train_mirrored_and_single():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 3)).astype("float32")
    initial = _regularized_model().get_weights()

    def train(strategy):
        with strategy.scope():
            model = _regularized_model()
            model.set_weights(initial)
            qat = quantization.quantize_apply(quantization.quantize_annotate_model(model))
            qat.compile(keras.optimizers.SGD(0.0), "mse")  # frozen weights: training loss ~ evaluation loss
        history = qat.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return qat, history.history["loss"][-1], qat.evaluate(x, y, batch_size=64, verbose=0)

    # Not the default collective all-reduce: its instance keys clash with other MirroredStrategies of the process.
    mirrored = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return train(mirrored), train(tf.distribute.OneDeviceStrategy(devices[0]))


def test_mirrored_strategy_leaves_the_layer_its_activation():
    (mirrored, _, mirrored_eval), (_, single_loss, single_eval) = _train_mirrored_and_single()
    hidden = mirrored.get_layer("quant_hidden")
    assert hidden.layer.activation is keras.activations.relu  # restored after the replicas' traces
    assert hidden.layer.activity_regularizer is not None
    assert mirrored_eval == pytest.approx(single_eval, rel=1e-4)  # the same ranges as one device
    assert single_loss == pytest.approx(single_eval, rel=0.01)


@pytest.mark.xfail(strict=True, reason=(
    "Keras 3.15 under MirroredStrategy with 2+ local devices and no XLA: a cross-replica collective in the "
    "forward pass (here the activation range's all-gather; plain Keras BatchNormalization(synchronized=True) "
    "does the same) is a merge_call that hands over to the other replica thread mid-forward, and add_loss "
    "losses added after it land in Keras's shared per-layer loss lists, so each replica's training loss "
    "counts both. Multi-worker training with one device per worker runs one replica thread per process."))
def test_mirrored_training_loss_counts_each_replicas_losses_once():
    (_, mirrored_loss, mirrored_eval), _ = _train_mirrored_and_single()
    assert mirrored_loss == pytest.approx(mirrored_eval, rel=0.01)


# ---------------------------------------------------------------- int8 file


def _run_tflite(content, x):
    interpreter = Interpreter(model_content=bytes(content))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    interpreter.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"]))
    interpreter.invoke()
    scale, zero = out["quantization"]
    return (interpreter.get_tensor(out["index"]).astype("float32") - zero) * scale


def test_qat_model_matches_its_int8_file_and_the_float_model():
    (x, y), (x_test, _) = load_digits()
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(8, 3, activation="relu", name="conv"),
        L.Flatten(),
        L.Dense(32, activation="sigmoid", name="hidden"),
        L.Dense(10, name="head"),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=3, verbose=0)
    activations = {layer.name: layer.activation for layer in model.layers if hasattr(layer, "activation")}

    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=64, epochs=1, verbose=0)
    assert {layer.name: layer.activation for layer in model.layers if hasattr(layer, "activation")} == activations
    wrappers = [layer for layer in qat.layers if isinstance(layer, quantization.QuantizeWrapper)]
    assert {w.layer.name: w.layer.activation for w in wrappers} == activations

    # Each activation is applied once: the QAT model is its float model plus quantization noise.
    float_copy = keras.models.clone_model(model)
    float_copy.set_weights([v for w in wrappers for v in w.layer.get_weights()])
    reference = qat.predict(x_test, verbose=0)
    assert _sqnr_db(float_copy.predict(x_test, verbose=0), reference) > 20

    tflite = convert.to_tflite(qat, validation_data=x_test)
    got = _run_tflite(tflite, x_test)
    assert _sqnr_db(reference, got) > 30
    assert np.mean(np.argmax(got, 1) == np.argmax(reference, 1)) > 0.98


def test_sigmoid_and_swish_round_the_sigmoid_like_the_int8_logistic_op():
    # EfficientNet's squeeze-excite pattern: swish (LOGISTIC then MUL in the file), a sigmoid gate and
    # a sigmoid head. The file's LOGISTIC output is int8 in steps of 1/256; a QAT model that left the
    # sigmoid unrounded differed from its file after every swish and gate.
    inputs = keras.Input((8, 8, 4))
    x = L.Activation("swish")(L.BatchNormalization()(L.Conv2D(16, 1, use_bias=False)(inputs)))
    gate = L.GlobalAveragePooling2D(keepdims=True)(x)
    gate = L.Conv2D(16, 1, activation="sigmoid")(L.Conv2D(4, 1, activation="swish")(gate))
    x = L.Conv2D(8, 1)(L.Multiply()([x, gate]))
    model = keras.Model(inputs, [x, L.Dense(3, activation="sigmoid")(L.GlobalAveragePooling2D()(x))])
    data = np.random.default_rng(0).normal(0, 1, (64, 8, 8, 4)).astype("float32")
    qat = quantization.quantize_model(model)
    qat.compile("adam", "mse")
    qat.fit(data, model.predict(data, verbose=0), batch_size=16, epochs=1, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=data)

    ops_in_file = [op["op_name"] for op in Interpreter(model_content=bytes(tflite))._get_ops_details()]
    assert ops_in_file.count("LOGISTIC") == 4 and "QUANTIZE" not in ops_in_file  # no requantization added
    (name,) = Interpreter(model_content=bytes(tflite)).get_signature_runner().get_input_details()
    got = litert(tflite, {name: data})
    for reference in qat(data, training=False):
        reference = np.asarray(reference, np.float64)
        (output,) = [key for key, value in got.items() if value.shape == reference.shape]
        # Only rounding ties of the integer kernels are left: few values are off by over half a step
        # (sigmoid left unrounded: 3-5% of the head's, 11-14% of the map's, 35-37 dB; rounded: 0-1%, 51 dB).
        assert np.mean(np.abs(reference - got[output]) > output_scale(tflite, output) / 2) < 0.02
        assert np_sqnr(reference, got[output]) > 45
