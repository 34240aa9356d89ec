"""What int8 files actually reach against their Keras models: the figures behind the default thresholds.

Run: `.venv/bin/python benchmarks/measure_thresholds.py` (about 8 minutes on 2 shared CPU cores).
Prints, for the digits CNN and MobileNetV2 (alpha=0.35, 64x64, 10 classes, weights=None), the SQNR and
decisive top-1 agreement of post-training (PTQ) and quantization-aware (QAT) int8 files, and of QAT files
broken on purpose (one activation scale in the flatbuffer multiplied by a factor).
Not a test (no `test_` prefix); benchmarks/RESULTS.md ("Validation thresholds") quotes its output.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kopt import convert, quantization  # noqa: E402
from kopt.convert import tflite as tflite_lib  # noqa: E402
from kopt.convert import validation  # noqa: E402
from kopt.convert._litert import run_signature, signature_names  # noqa: E402
from kopt.datasets import load_digits  # noqa: E402
from kopt.demo import build_cnn  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
LOOSE = dict(min_sqnr_db=-1e9, min_top1_agreement=0.0)  # measure, never reject


def scale_activation(content, op_name, factor, occurrence=0):
    """The file with the output scale of the `occurrence`-th `op_name` op multiplied by `factor`."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    ops = [op for op in graph.operators
           if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == op_name]
    tensor = graph.tensors[ops[occurrence].outputs[0]]
    tensor.quantization.scale = [s * factor for s in tensor.quantization.scale]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def raw_top1(model, content, x):
    """Top-1 agreement over all samples, near-ties included."""
    _, _, (reference,) = validation.predict_outputs(model, [x])
    (input_name,), _ = signature_names(content)
    (got,) = run_signature(content, {input_name: x}).values()
    return float(np.mean(reference.argmax(-1) == got.argmax(-1)))


def row(label, report, model, content, x):
    output = report.outputs[0]
    top1 = "n/a" if output.top1_agreement is None else f"{output.top1_agreement:.2%}"
    default, _ = validation.default_thresholds("int8", report.source == "quantization-aware", report.ops)
    print(f"| {label} | {report.ops} | {output.sqnr_db:.1f} | {default:g} | {top1} | "
          f"{output.tied_samples}/{report.samples} | {raw_top1(model, content, x[:report.samples]):.2%} |",
          flush=True)


def digits(qat_epochs):
    (x_train, y_train), (x_test, _) = load_digits()
    keras.utils.set_random_seed(0)
    model = build_cnn()
    model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=15, verbose=0)
    ptq = convert.to_tflite(model, representative_data=x_train, validation_data=x_test, **LOOSE)
    row("digits CNN, PTQ int8", ptq.report, model, ptq, x_test)
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    for epochs in qat_epochs:
        qat.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
        tflite = convert.to_tflite(qat, validation_data=x_test, **LOOSE)
        row(f"digits CNN, QAT int8 (+{epochs} epoch)", tflite.report, qat, tflite, x_test)
    for op, occurrence in (("CONV_2D", 0), ("FULLY_CONNECTED", 0)):
        for factor in (0.5, 0.8, 1.25, 2.0):
            broken = scale_activation(tflite, op, factor, occurrence)
            row(f"digits CNN, QAT int8, {op} #{occurrence} output scale x{factor}",
                tflite_lib.compare(qat, broken, x_test, "int8", **LOOSE), qat, broken, x_test)


def inverted_residuals(blocks):
    """A MobileNetV2-like stack of `blocks` inverted-residual blocks on 16x16x3 digits."""
    (x_train, y_train), (x_test, _) = load_digits()
    up = lambda x: np.repeat(np.kron(x, np.ones((1, 2, 2, 1), "float32")), 3, axis=-1) * 2 - 1  # noqa: E731
    x_train, x_test = up(x_train), up(x_test)
    keras.utils.set_random_seed(0)
    L = keras.layers

    def conv_bn(x, layer, relu=True):
        x = L.BatchNormalization(momentum=0.9)(layer(x))
        return L.ReLU(6.0)(x) if relu else x

    inputs = keras.Input((16, 16, 3))
    x = conv_bn(inputs, L.Conv2D(16, 3, padding="same", use_bias=False))
    for _ in range(blocks):
        y = conv_bn(x, L.Conv2D(48, 1, use_bias=False))
        y = conv_bn(y, L.DepthwiseConv2D(3, padding="same", use_bias=False))
        x = L.Add()([x, conv_bn(y, L.Conv2D(16, 1, use_bias=False), relu=False)])
    model = keras.Model(inputs, L.Dense(10)(L.GlobalAveragePooling2D()(x)))
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    model.fit(x_train, y_train, epochs=3, verbose=0)
    label = f"{blocks} inverted-residual blocks"
    ptq = convert.to_tflite(model, representative_data=x_train, validation_data=x_test, **LOOSE)
    row(f"{label}, PTQ int8", ptq.report, model, ptq, x_test)
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    qat.fit(x_train, y_train, epochs=1, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=x_test, **LOOSE)
    row(f"{label}, QAT int8 (+1 epoch)", tflite.report, qat, tflite, x_test)


def mobilenet(train_epochs, qat_epochs, logits=False):
    (x_train, y_train), (x_test, y_test) = load_digits()
    y_test = y_test[:200]
    up = lambda x: np.repeat(np.kron(x, np.ones((1, 8, 8, 1), "float32")), 3, axis=-1) * 2 - 1  # noqa: E731
    x_train, x_test = up(x_train), up(x_test)[:200]
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(64, 64, 3), weights=None, classes=10,
                                           classifier_activation=None if logits else "softmax")
    loss = LOSS if logits else "sparse_categorical_crossentropy"
    label = f"MobileNetV2-0.35 {'logits' if logits else 'softmax'}, untrained"
    if train_epochs:
        for layer in model.layers:  # Keras' MobileNetV2 uses momentum 0.999: its moving statistics would
            if isinstance(layer, keras.layers.BatchNormalization):  # not converge in a few hundred steps
                layer.momentum = 0.9
        model.compile(keras.optimizers.Adam(1e-3), loss)
        model.fit(x_train, y_train, batch_size=32, epochs=train_epochs, verbose=0)
        accuracy = np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test)
        label = label.replace("untrained", f"{train_epochs} epochs on digits (accuracy {accuracy:.2f})")
    ptq = convert.to_tflite(model, representative_data=x_train[:300], validation_data=x_test, **LOOSE)
    row(f"{label}, PTQ int8", ptq.report, model, ptq, x_test)
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), loss)
    qat.fit(x_train, y_train, batch_size=32, epochs=qat_epochs, verbose=0)
    tflite = convert.to_tflite(qat, validation_data=x_test, **LOOSE)
    row(f"{label}, QAT int8 (+{qat_epochs} epoch)", tflite.report, qat, tflite, x_test)
    for occurrence in (0, -1):
        for factor in (0.5, 2.0):
            broken = scale_activation(tflite, "CONV_2D", factor, occurrence)
            row(f"{label}, QAT int8, CONV_2D #{occurrence} output scale x{factor}",
                tflite_lib.compare(qat, broken, x_test, "int8", **LOOSE), qat, broken, x_test)


if __name__ == "__main__":
    start = time.perf_counter()
    print("| file vs Keras model | ops | SQNR dB | default min SQNR | decisive top-1 | near-tied | "
          "top-1 over all samples |")
    print("|---|---|---|---|---|---|---|")
    digits(qat_epochs=(1, 2))
    inverted_residuals(blocks=10)
    mobilenet(train_epochs=0, qat_epochs=1)
    mobilenet(train_epochs=3, qat_epochs=1)
    mobilenet(train_epochs=3, qat_epochs=1, logits=True)
    print(f"({time.perf_counter() - start:.0f} s, {sys.argv[0]})")
