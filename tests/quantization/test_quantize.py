"""quantize_model / quantize_apply: QAT models that convert to int8 files matching them."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L
from keras import ops

from kopt import convert, quantization, sparsity
from kopt.datasets import load_digits
from kopt.demo import build_cnn
from kopt.experimental.combine import Default8BitPrunePreserveQuantizeScheme
from litert_truth import decisive, file_sqnr, np_sqnr, only_output

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def pruned_qat(digits):
    """Dense CNN -> 80% pruned -> stripped -> QAT on digits (shared by several tests)."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    model = build_cnn()
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    model.fit(x_train, y_train, batch_size=32, epochs=15, verbose=0)
    pruned = sparsity.prune_low_magnitude(
        model, pruning_schedule=sparsity.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=200, frequency=10))
    pruned.compile(keras.optimizers.Adam(5e-4), LOSS)
    pruned.fit(x_train, y_train, batch_size=32, epochs=7, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(pruned)
    qat = quantization.quantize_model(stripped, quantize_scheme=Default8BitPrunePreserveQuantizeScheme())
    qat.compile(keras.optimizers.Adam(1e-4), LOSS, metrics=["accuracy"])
    qat.fit(x_train, y_train, batch_size=32, epochs=3, verbose=0)
    return stripped, qat


def test_qat_model_and_its_int8_file_agree_on_digits(digits, pruned_qat):
    _, (x_test, y_test) = digits
    _, qat = pruned_qat
    tflite = convert.to_tflite(qat, validation_data=x_test, max_samples=len(x_test))
    assert tflite.report.samples == len(x_test) == 450
    assert tflite.report.top1_agreement >= 0.99
    info = convert.inspect(tflite)
    assert info.inputs[0]["dtype"] == "int8" and info.outputs[0]["dtype"] == "int8"
    keras_accuracy = qat.evaluate(x_test, y_test, verbose=0)[1]
    assert abs(convert.evaluate(tflite, x_test, y_test) - keras_accuracy) <= 0.01


def test_pruned_then_qat_keeps_its_zeros_into_the_file(pruned_qat):
    stripped, qat = pruned_qat
    before = sparsity.get_sparsity(stripped)
    assert all(v == pytest.approx(0.8, abs=0.005) for v in before.values())
    for wrapper in [layer for layer in qat.layers if isinstance(layer, quantization.QuantizeWrapper)]:
        for variable, value in wrapper.effective_weights():
            assert np.mean(ops.convert_to_numpy(value) == 0) == pytest.approx(0.8, abs=0.005), variable.path
    info = convert.inspect(convert.to_tflite(qat, validate=False))
    assert info.zero_weight_fraction >= 0.79


def test_qat_layers_and_graph(pruned_qat):
    _, qat = pruned_qat
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds == ["QuantizeLayer", "QuantizeWrapper", "QuantizeWrapper", "MaxPooling2D", "Flatten",
                     "QuantizeWrapper", "QuantizeWrapper"]
    conv = qat.layers[1]
    assert conv._weight_states[0]["max"].shape == (16,)  # per-channel for Conv2D
    assert qat.layers[5]._weight_states[0]["max"].shape == ()  # per-tensor for Dense


def test_save_load_continue_qat_keeps_the_ranges(digits, tmp_path):
    (x_train, y_train), _ = digits
    x, y = x_train[:256], y_train[:256]
    model = build_cnn()
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    qat.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    path = os.fspath(tmp_path / "qat.keras")
    qat.save(path)
    loaded = keras.models.load_model(path)

    def ranges(m):
        return [ops.convert_to_numpy(v) for layer in m.layers if isinstance(layer, (quantization.QuantizeWrapper, quantization.QuantizeLayer))
                for v in layer.non_trainable_weights if v.name.endswith(("_min", "_max", "_seen"))]

    for a, b in zip(ranges(qat), ranges(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qat.predict(x, verbose=0), atol=1e-6)
    qat.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(ranges(qat), ranges(loaded), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # continued from the saved ranges, not from scratch


def test_qat_under_mirrored_strategy(digits):
    (x_train, y_train), (x_test, _) = digits
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    initial = build_cnn().get_weights()

    def train(strategy):
        with strategy.scope():
            model = build_cnn()
            model.set_weights(initial)
            qat = quantization.quantize_model(model)
            qat.compile(keras.optimizers.SGD(0.05), LOSS)
        qat.fit(x_train[:512], y_train[:512], batch_size=64, epochs=2, shuffle=False, verbose=0)
        return qat

    # Not the default collective all-reduce: two of those in one process (another test's) clash on instance keys.
    mirrored = train(tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice()))
    single = train(tf.distribute.OneDeviceStrategy(devices[0]))
    for layer in mirrored.layers:
        for variable in layer.non_trainable_weights:
            replicas = [v.numpy() for v in variable.value.values]
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=variable.path)
    # The activation ranges are the widest of the replicas' ranges: what one device measures on the
    # whole batch. So the two runs agree to floating-point noise (averaged ranges were 2e-2 apart).
    for a, b in zip(mirrored.weights, single.weights, strict=True):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), atol=1e-3, err_msg=a.path)
    # Top-1 on the samples whose top-2 margin exceeds two int8 steps of the output: after 2 epochs many samples are
    # near-tied, and weights 1e-3 apart flip those on one CPU and not another (AVX2-only: 0.967 on all samples).
    ours, theirs = mirrored.predict(x_test, verbose=0), single.predict(x_test, verbose=0)
    clear = decisive(theirs, 0.0)
    assert clear.mean() > 0.5 and np.mean(ours[clear].argmax(-1) == theirs[clear].argmax(-1)) >= 0.99
    tflite = convert.to_tflite(mirrored, validation_data=x_test)
    assert file_sqnr(mirrored, tflite, x_test) > 20


@pytest.mark.slow  # a MobileNetV2 trained and converted (slow tier, run by CI)
def test_mobilenet_v2_goes_to_full_int8():
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, weights=None, classes=10)
    qat = quantization.quantize_model(model)
    assert not any(isinstance(layer, L.BatchNormalization) for layer in qat.layers)  # all folded
    x = np.random.default_rng(0).random((32, 64, 64, 3)).astype("float32")
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, np.arange(32) % 10, batch_size=16, epochs=1, verbose=0)
    # Random weights give a near-uniform softmax, so arg-max agreement means nothing here: check SQNR.
    tflite = convert.to_tflite(qat, validation_data=x, min_top1_agreement=0.0)
    info = convert.inspect(tflite)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED", "SOFTMAX"} <= set(info.op_counts)
    assert "QUANTIZE" not in info.op_counts and "DEQUANTIZE" not in info.op_counts
    assert file_sqnr(qat, tflite, x) > 20


def test_batchnorm_is_folded_and_qat_starts_close_to_float():
    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, use_bias=False)(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    x = L.DepthwiseConv2D(3)(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    outputs = L.Dense(4)(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    data = rng.random((64, 12, 12, 3)).astype("float32")
    model.compile("adam", "mse")
    model.fit(data, rng.random((64, 4)).astype("float32"), epochs=2, verbose=0)  # non-trivial BN statistics
    qat = quantization.quantize_model(model)
    assert [type(layer).__name__ for layer in qat.layers].count("Identity") == 2
    conv = next(layer for layer in qat.layers if isinstance(layer, quantization.QuantizeWrapper))
    assert conv.layer.use_bias and not conv.quantize_output  # folded bias; range shared with the ReLU6
    reference = model.predict(data, verbose=0)
    # Calibrate the activation ranges on data (one epoch at lr=0 changes no weight).
    qat.compile(keras.optimizers.SGD(0.0), "mse")
    qat.fit(data, reference, epochs=1, verbose=0)
    got = qat.predict(data, verbose=0)
    assert convert.validation.sqnr_db(reference, got) > 20
    tflite = convert.to_tflite(qat, validation_data=data)
    assert file_sqnr(qat, tflite, data) > 20


def test_many_layer_kinds_nested_model_and_rescaling_input():
    block = keras.Sequential([keras.Input((8, 8, 8)), L.Conv2D(8, 3, padding="same", activation="relu"),
                              L.DepthwiseConv2D(3, padding="same"), L.ReLU()], name="block")
    inputs = keras.Input((16, 16, 3))
    x = L.Rescaling(1 / 255.0)(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    y = block(x)
    x = L.Add()([x, y])
    z = L.Multiply()([x, L.Activation("sigmoid")(L.Conv2D(8, 1)(x))])
    x = L.Concatenate()([x, z])
    x = L.ZeroPadding2D(1)(x)
    x = L.AveragePooling2D(2)(x)
    x = L.UpSampling2D()(x)
    x = L.Conv2DTranspose(4, 3, strides=2, padding="same", activation="relu6")(x)
    x = L.Dropout(0.1)(L.Flatten()(L.MaxPooling2D(4)(x)))
    outputs = L.Dense(5, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    qat = quantization.quantize_model(model)
    nested = next(layer for layer in qat.layers if isinstance(layer, keras.Sequential))
    assert [type(layer).__name__ for layer in nested.layers] == ["QuantizeWrapper", "QuantizeWrapper", "QuantizeWrapper"]
    data = np.random.default_rng(0).uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    qat.compile("adam", "categorical_crossentropy")
    qat.fit(data, np.eye(5)[np.arange(64) % 5], epochs=2, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=data)
    assert file_sqnr(qat, tflite, data) > 25


class Scale(L.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.w


class ScaleConfig(quantization.QuantizeConfig):
    def get_weights_and_quantizers(self, layer):
        return [(layer.w, quantization.WeightQuantizer())]

    def get_activations_and_quantizers(self, layer):
        return []

    def get_output_quantizers(self, layer):
        return [quantization.ActivationQuantizer()]

    def get_config(self):
        return {}


def test_unsupported_layers_are_listed_in_one_error_with_both_ways_out():
    model = keras.Sequential([keras.Input((6, 4)), L.LSTM(4, return_sequences=True, name="lstm"),
                              L.Reshape((6, 4, 1, 1)), L.Conv3D(1, 1, name="c3d"), L.Reshape((6, 4)),
                              L.LayerNormalization(name="norm"), Scale(name="scale"), L.Flatten(), L.Dense(2)])
    with pytest.raises(ValueError) as error:
        quantization.quantize_model(model)
    message = str(error.value)
    for name in ("lstm (LSTM)", "c3d (Conv3D)", "QuantizeConfig", "float_layers"):
        assert name in message
    # LayerNormalization has an integer form; a custom layer gets its output quantized.
    assert "norm" not in message and "scale" not in message
    qat = quantization.quantize_model(model, float_layers=["lstm", L.Conv3D])
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds[:4] == ["LSTM", "Reshape", "Conv3D", "Reshape"]
    norm, scale = qat.get_layer("quant_norm"), qat.get_layer("quant_scale")
    assert isinstance(norm.layer, quantization.IntegerLayerNormalization)
    assert isinstance(scale.layer, Scale) and not scale.quantize_config.get_weights_and_quantizers(scale.layer)
    x = np.random.default_rng(0).normal(size=(4, 6, 4)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(x, np.zeros((4, 2)), verbose=0)
    # The quantized custom layer's output lies on its range's 8-bit grid.
    probe = keras.Model(qat.inputs, scale.output)
    values = np.unique(keras.ops.convert_to_numpy(probe(x)))
    assert len(values) <= 256


def test_custom_layer_with_a_quantize_config():
    model = keras.Sequential([
        keras.Input((6,)), L.Dense(4, name="d"),
        quantization.quantize_annotate_layer(Scale(name="scale"), ScaleConfig()),
    ])
    annotated = quantization.quantize_annotate_model(model)
    qat = quantization.quantize_apply(annotated)
    wrapper = qat.layers[-1]
    assert isinstance(wrapper, quantization.QuantizeWrapper) and isinstance(wrapper.quantize_config, ScaleConfig)
    data = np.random.default_rng(0).random((32, 6)).astype("float32")
    qat.compile("adam", "mse")
    qat.fit(data, np.zeros((32, 4)), epochs=1, verbose=0)
    assert file_sqnr(qat, convert.to_tflite(qat, validation_data=data, min_top1_agreement=0), data) > 20


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: quantization.quantize_model("model"), "to_quantize"),
        (lambda: quantization.quantize_model(keras.Sequential([L.Dense(2)])), "not built"),
        (lambda: quantization.quantize_annotate_layer(L.Dense(2), quantize_config="8bit"), "quantize_config"),
        (lambda: quantization.quantize_annotate_layer(keras.Sequential()), "to_annotate"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_normalization_at_the_input_converts_to_full_int8():
    data = np.random.default_rng(0).normal(5, 3, (64, 10)).astype("float32")
    norm = L.Normalization()
    norm.adapt(data)
    model = keras.Sequential([keras.Input((10,)), norm, L.Dense(8, activation="relu"), L.Dense(3)])
    qat = quantization.quantize_model(model)
    qat.compile("adam", "mse")
    qat.fit(data, np.zeros((64, 3)), epochs=1, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=data)
    assert file_sqnr(qat, tflite, data) > 30


@pytest.mark.parametrize("two_d", [True, False])
def test_separable_convolutions_are_split_and_convert_to_full_int8(two_d):
    shape, layer = ((12, 12, 4), L.SeparableConv2D(8, 3, depth_multiplier=1, activation="relu")) if two_d else (
        (16, 4), L.SeparableConv1D(8, 3, activation="relu"))
    model = keras.Sequential([keras.Input(shape), layer, L.Flatten(), L.Dense(3)])
    data = np.random.default_rng(0).random((64, *shape)).astype("float32")
    reference = model.predict(data, verbose=0)
    qat = quantization.quantize_model(model)
    split = next(layer for layer in qat.layers if isinstance(layer, keras.Sequential))
    assert [type(w.layer).__name__ for w in split.layers] == (
        ["DepthwiseConv2D", "Conv2D"] if two_d else ["DepthwiseConv1D", "Conv1D"])
    qat.compile(keras.optimizers.SGD(0.0), "mse")
    qat.fit(data, reference, epochs=1, verbose=0)  # calibrate ranges; weights unchanged
    assert convert.validation.sqnr_db(reference, qat.predict(data, verbose=0)) > 20  # same function as before
    tflite = convert.to_tflite(qat, validation_data=data)
    assert file_sqnr(qat, tflite, data) > 20


@pytest.mark.parametrize("layer, shape", [
    (lambda: L.Conv1D(4, 3, activation="relu"), (10, 3)),
    (lambda: L.Conv1DTranspose(4, 3, strides=2, padding="same"), (10, 3)),
    (lambda: L.DepthwiseConv1D(3, activation="relu"), (10, 3)),
    (lambda: L.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c"), (6,)),
])
def test_other_weighted_layers_convert_to_full_int8(layer, shape):
    model = keras.Sequential([keras.Input(shape), layer(), L.Flatten(), L.Dense(3)])
    data = np.random.default_rng(0).random((32, *shape)).astype("float32")
    qat = quantization.quantize_model(model)
    qat.compile("adam", "mse")
    qat.fit(data, np.zeros((32, 3)), epochs=1, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=data, min_top1_agreement=0.0)
    assert file_sqnr(qat, tflite, data) > 20


def test_a_pruned_model_must_be_stripped_first():
    pruned = sparsity.prune_low_magnitude(keras.Sequential([keras.Input((4,)), L.Dense(3, name="d")]))
    with pytest.raises(ValueError, match="strip_pruning"):
        quantization.quantize_model(pruned)


def test_dense_weights_get_no_sparsity_mask():
    qat = quantization.quantize_model(build_cnn())
    assert all(not w.sparsity_masks for w in qat.layers if isinstance(w, quantization.QuantizeWrapper))


def test_depth_multiplier_above_one_converts_to_int8():
    # Per-channel depthwise ranges would be per input channel, TFLite's are per output channel
    # (channels x multiplier): the converter failed with "mismatched quantized axes".
    inputs = keras.Input((8, 8, 3))
    x = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu")(inputs)
    x = L.SeparableConv2D(8, 3, depth_multiplier=2)(x)
    x = L.BatchNormalization()(x)
    outputs = L.Dense(4)(L.GlobalAveragePooling2D()(L.ReLU()(x)))
    model = keras.Model(inputs, outputs)
    data = np.random.default_rng(0).uniform(0, 1, (64, 8, 8, 3)).astype("float32")
    qat = quantization.quantize_model(model)
    qat.compile("adam", "mse")
    qat.fit(data, model.predict(data, verbose=0), epochs=2, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=data)
    reference = keras.ops.convert_to_numpy(qat(data, training=False)).astype("float64")
    got = np.asarray(only_output(tflite, data), "float64").reshape(reference.shape)
    assert np_sqnr(reference, got) > 30.0
