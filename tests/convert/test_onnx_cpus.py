"""QAT ONNX files agree with their model on every x86 CPU, including AVX2-only ones without VNNI.

onnxruntime picks its integer kernels by the CPU it runs on. On x86 without VNNI (AVX2 only, e.g. older AMD
EPYC) its U8S8 kernels add pairs of uint8 x int8 products in saturating 16-bit integers, so a correct
file with int8 weights can disagree with its model there while passing on an AVX-512 VNNI machine. These
tests run the files in onnxruntime with its default options under QEMU's user-mode emulation of a Haswell
CPU (AVX2, no AVX-512, no VNNI) and of a Nehalem CPU (SSE4 only), whatever CPU the suite runs on, and
compare with the QAT model. `.ci/run` installs QEMU (Debian's qemu-user); without it these tests skip.
"""

import functools
import shutil
import subprocess
import sys

import keras
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kopt import convert, quantization
from kopt.convert import _onnxruntime
from kopt.datasets import load_digits

QEMU = shutil.which("qemu-x86_64")
# Slow tier (run by CI): onnxruntime runs emulated. Skipped without QEMU (e.g. after the README's command on a bare machine).
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64 (apt-get install qemu-user)")]
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

_RUNNER = """
import sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
spec = session.get_inputs()[0]
feed = {spec.name: x.astype(np.int32 if spec.type == "tensor(int32)" else np.float32)}
np.save(sys.argv[3], session.run(None, feed)[0])
"""


def run_on_cpu(cpu, content, x, tmp_path):
    """The file's output in onnxruntime (default options) on an emulated `cpu` (a QEMU CPU model)."""
    model_path, x_path, y_path, script = (tmp_path / f"{cpu}.{n}" for n in ("onnx", "x.npy", "y.npy", "py"))
    model_path.write_bytes(bytes(content))
    np.save(x_path, x)
    script.write_text(_RUNNER)
    if sys.platform != "linux":
        pytest.fail("the CPU emulation runs on Linux only")
    done = subprocess.run([QEMU, "-cpu", cpu, sys.executable, str(script), str(model_path), str(x_path), str(y_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(y_path)


def qat_file_input(content):
    return onnx.load_from_string(bytes(content)).graph.input[0].name


def sqnr(reference, got):
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / max(np.sum((reference - got) ** 2), 1e-30))


def as_u8s8(content):
    """The same file with its weights stored the other way, int8 around zero point 0 (U8S8): same values."""
    proto = onnx.load_from_string(bytes(content))
    tensors = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in tensors:
            for name in (node.input[0], node.input[2]):
                value = numpy_helper.to_array(tensors[name]).astype(np.int16) - 128
                tensors[name].CopyFrom(numpy_helper.from_array(value.astype(np.int8), name))
    return proto.SerializeToString()


def _patterns():
    conv_relu = [keras.layers.Conv2D(16, 3, padding="same"), keras.layers.ReLU(),
                 keras.layers.Conv2D(32, 3, padding="same"), keras.layers.ReLU()]
    batchnorm_depthwise = [keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(),
                           keras.layers.ReLU(), keras.layers.DepthwiseConv2D(3, padding="same"),
                           keras.layers.BatchNormalization(), keras.layers.ReLU(),
                           keras.layers.Conv2D(32, 1), keras.layers.ReLU()]
    return {"conv_relu_gap_dense": conv_relu, "batchnorm_depthwise": batchnorm_depthwise}


def _transformer():
    """Token ids -> Embedding -> MultiHeadAttention -> LayerNormalization -> GELU MLP -> LayerNormalization -> Dense."""
    L = keras.layers
    ids = keras.Input((16,), dtype="int32", name="ids")
    h = L.Embedding(64, 32)(ids)
    h = L.LayerNormalization()(h + L.MultiHeadAttention(2, 16)(h, h))
    h = L.LayerNormalization()(h + L.Dense(32)(L.Dense(64, activation="gelu")(h)))
    return keras.Model(ids, L.Dense(2)(L.GlobalAveragePooling1D()(h)))


def _token_data():
    x = np.random.default_rng(0).integers(0, 64, (712, 16)).astype("int32")
    y = (x[:, 0] > 32).astype("int32")
    return (x[:512], y[:512]), (x[512:], y[512:])


@functools.cache
def _qat_file(pattern):
    if pattern == "transformer":
        (x_train, y_train), (x_test, _) = _token_data()
        keras.utils.set_random_seed(0)
        model = _transformer()
    else:
        (x_train, y_train), (x_test, _) = load_digits()
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 1)), *_patterns()[pattern],
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(3e-3), LOSS)
    model.fit(x_train, y_train, batch_size=32, epochs=4, verbose=0)
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    qat.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    x = x_test[:200]
    result = convert.to_onnx(qat, validation_data=x)  # validated natively, on this machine's CPU
    return qat.predict(x, verbose=0), result, x


@pytest.fixture(params=sorted(_patterns()) + ["transformer"])
def qat_file(request):
    return _qat_file(request.param)


@pytest.mark.parametrize("cpu", ["Haswell", "Nehalem"])
def test_qat_file_agrees_on_cpus_without_vnni(qat_file, cpu, tmp_path):
    reference, result, x = qat_file
    got = run_on_cpu(cpu, result, x, tmp_path)
    (native,) = _onnxruntime.run(bytes(result), {qat_file_input(result): x}).values()
    # The validation threshold the file passed on this machine holds on the emulated CPU too.
    assert sqnr(reference, got) >= result.report.min_sqnr_db
    assert np.mean(reference.argmax(-1) == got.argmax(-1)) >= 0.97
    if len(x.shape) == 4:  # CNNs: integer kernels only, so the two CPUs compute (nearly) the same integers
        assert sqnr(native, got) > 45
    else:  # the transformer runs softmax, GELU and LayerNormalization in float between Q/DQ pairs, whose rounding
        # differs between AVX2 and AVX-512 kernels (measured 35.6 dB apart): as close as the file is to its model
        assert sqnr(native, got) >= result.report.min_sqnr_db


def test_the_emulation_exposes_u8s8_saturation(tmp_path):
    """The check above can fail: the same values stored as int8 weights (U8S8) saturate on the emulated AVX2 CPU."""
    reference, result, x = _qat_file("conv_relu_gap_dense")
    got = run_on_cpu("Haswell", as_u8s8(result), x, tmp_path)
    assert sqnr(reference, got) < result.report.min_sqnr_db - 5  # measured 18.6 dB against a 33.25 dB threshold
    assert sqnr(reference, run_on_cpu("Haswell", result, x, tmp_path)) >= result.report.min_sqnr_db
