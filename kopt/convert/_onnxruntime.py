"""The onnxruntime runtime: loading and running ONNX files on the CPU, as users run them."""

import numpy as np

from kopt.convert.samples import run_in_batches
from kopt.convert._onnx_info import read_onnx

INSTALL = 'pip install "kopt-keras[onnx]"'


def require():
    """Imports what the ONNX path needs (tf2onnx runs inside `model.export`), with an install hint if missing."""
    missing = []
    for name in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {INSTALL}")


def session(content, threads=None):
    """An onnxruntime `InferenceSession` on the CPU, with its default graph optimizations (as users run it).

    Args:
        content: the ONNX bytes or a path.
        threads: intra-op threads; None: onnxruntime's default.

    Raises:
        ValueError: onnxruntime cannot load the file (the message says why).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(read_onnx(content), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's InvalidGraph, NotImplemented ...: the file is of no use
        raise ValueError(f"onnxruntime {onnxruntime.__version__} cannot load the ONNX model: {error}") from None


def run(model, inputs, batch_size=256):
    """Runs an ONNX model in onnxruntime by input name, in batches.

    Args:
        model: the ONNX bytes, a path, or a `session` already made.
        inputs: dict from ONNX input name to an array; all with the same
            number of samples (cast to the input's dtype).
        batch_size: samples per run.

    Returns:
        A dict from ONNX output name to a float32 array, in the file's output
        order.
    """
    runner = model if hasattr(model, "get_inputs") else session(model)
    specs = {i.name: i for i in runner.get_inputs()}
    if set(inputs) != set(specs):
        raise ValueError(f"The ONNX model has inputs {sorted(specs)}, got {sorted(inputs)}.")
    names = [o.name for o in runner.get_outputs()]

    def call(batch):
        feed = {name: np.asarray(x).astype(_numpy_type(specs[name].type)) for name, x in batch.items()}
        return {name: np.asarray(y).astype("float32") for name, y in zip(names, runner.run(names, feed))}

    return run_in_batches(call, inputs, batch_size)


def _numpy_type(ort_type):
    """onnxruntime's "tensor(float)" -> "float32"."""
    name = ort_type[len("tensor("):-1] if ort_type.startswith("tensor(") else ort_type
    return {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool"}.get(name, name)
