"""Model files in memory and on disk: the bytes a converter returns, written atomically; plain-JSON figures."""

import os
import tempfile

import numpy as np


def read_bytes(value, suffix, what):
    """The bytes of a model file given as bytes or a path; a ValueError naming `suffix` / `what` otherwise.

    Args:
        value: bytes (or bytearray, memoryview) or a path.
        suffix: the file's suffix, for the message (".tflite").
        what: what the file holds, for the message ("a .tflite model").
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (str, os.PathLike)):
        if not os.path.isfile(value):
            raise ValueError(f"No {suffix} file at {os.fspath(value)!r}.")
        with open(value, "rb") as f:
            return f.read()
    raise ValueError(f"Expected the bytes of {what} or a path to one, got {type(value).__name__}.")


def check_folder(path, argument="path"):
    """Raises a ValueError naming `argument` if the folder of `path` does not exist (checked before slow work)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"`{argument}` {os.fspath(path)!r}: the folder {folder!r} does not exist. Create it first.")


def normal_mode(path):
    """Gives `path` a new file's usual mode (0o666 less the umask): `tempfile.mkstemp` makes files private."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_atomically(path, content):
    """Writes `content` to a temporary file next to `path` (`.kopt-*<ext>.part`), then renames it to `path`.

    A reader never sees a half-written file, and a failure leaves no file behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = (os.path.splitext(path)[1] or ".bin") + ".part"
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".kopt-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(content)
        normal_mode(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class ModelFile(bytes):
    """The bytes of a converted model, with the `report` of its validation and the `path` it was written to."""

    report = None
    path = None

    def save(self, path):
        """Writes the file to `path` atomically (its folder must exist) and returns `path`.

        Args:
            path: where to write, e.g. "model_int8.tflite".
        """
        check_folder(path)
        write_atomically(path, bytes(self))
        self.path = os.fspath(path)
        return self.path


class TFLiteModel(ModelFile):
    """The bytes of a .tflite model, with the `report` of its validation and the `path` it was written to.

    Example:

    ```python
    tflite = kopt.convert.to_tflite(model, quantization=None, validate=False)
    tflite.save("model.tflite")
    ```
    """

    mixed_precision = None  # a MixedPrecisionReport when layers were kept float


class ONNXModel(ModelFile):
    """The bytes of an ONNX model, with the `report` of its validation and the `path` it was written to.

    Example:

    ```python
    onnx_model = kopt.convert.to_onnx(model, validate=False)
    onnx_model.save("model.onnx")
    ```
    """


def to_plain(value):
    """`value` with tuples as lists and NumPy scalars as Python numbers (JSON-able)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
