"""`to_tflite`: Keras 3 model -> .tflite (float, float16, dynamic, int16x8 or full int8), validated."""

import logging
import os
import tempfile
import warnings

import keras
import numpy as np

from kopt._keras.clone import walk_layers
from kopt.convert import validate as validate_lib
from kopt.convert.data import collect_samples
from kopt.convert.inspect import inspect

logger = logging.getLogger("kopt")

MODES = (None, "float16", "dynamic", "int8", "int16x8")
_INT_TYPES = {"int8": "int8", "uint8": "uint8", "int16": "int16"}


class TFLiteModel(bytes):
    """The bytes of a .tflite model, with the `report` of its validation and the `path` it was written to."""

    report = None
    path = None


def is_quantization_aware(model):
    """Whether `model` holds kopt QAT layers (its ranges come from training, not from calibration)."""
    from kopt.quantization import QuantizeLayer, QuantizeWrapper

    return any(isinstance(layer, (QuantizeWrapper, QuantizeLayer)) for layer in walk_layers(model))


def _check_arguments(model, path, quantization, input_type, output_type, on_mismatch):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a Keras 3 keras.Model, got {type(model).__module__}.{type(model).__name__}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(f"`model` ('{model.name}') must be built with known inputs: give it a keras.Input.")
    if len(model.inputs) != 1:
        raise ValueError(f"`model` has {len(model.inputs)} inputs; to_tflite supports single-input models.")
    if quantization not in MODES:
        raise ValueError(f"`quantization` must be one of {MODES}, got {quantization!r}. "
                         "Use 'int8' for full-integer models (edge devices), None for float32.")
    integer_mode = quantization in ("int8", "int16x8")
    for name, value in (("input_type", input_type), ("output_type", output_type)):
        if value is None:
            continue
        if value not in ("float32", *_INT_TYPES):
            raise ValueError(f"`{name}` must be 'int8', 'uint8', 'int16', 'float32' or None, got {value!r}.")
        if value != "float32" and not integer_mode:
            raise ValueError(
                f"`{name}`={value!r} needs an integer quantization mode, but quantization={quantization!r} keeps "
                f"float inputs and outputs. Use quantization='int8', or {name}='float32' / None.")
        if quantization == "int16x8" and value in ("int8", "uint8"):
            raise ValueError(f"`{name}`={value!r} does not fit quantization='int16x8': use 'int16' or 'float32'.")
    if on_mismatch not in ("raise", "warn"):
        raise ValueError(f"`on_mismatch` must be 'raise' or 'warn', got {on_mismatch!r}.")
    if path is not None:
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        if not os.path.isdir(folder):
            raise ValueError(f"`path` {os.fspath(path)!r}: the folder {folder!r} does not exist. Create it first.")


def _write_atomically(path, content):
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".kopt-", suffix=".tflite.part")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _convert(model, quantization, calibration, input_type, output_type):
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="kopt-export-") as export_dir:
        # The Keras-3-safe path: export a SavedModel and convert that (converting the Keras object
        # directly is fragile on Keras 3).
        model.export(export_dir, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(export_dir)
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if calibration is not None:
            def representative_dataset():
                for sample in calibration:
                    yield [sample[None]]

            converter.representative_dataset = representative_dataset
        if quantization in ("int8", "int16x8"):
            converter.inference_input_type = getattr(tf, input_type)
            converter.inference_output_type = getattr(tf, output_type)
        return converter.convert()


def to_tflite(model, path=None, *, quantization="int8", representative_data=None, input_type=None,
              output_type=None, validate=True, validation_data=None, max_samples=300, min_sqnr_db=None,
              min_top1_agreement=None, on_mismatch="raise", allow_float_ops=False, verbose=False):
    """Converts a Keras 3 model to TFLite and checks the file against the model.

    A QAT model (from `kopt.quantization`) converts to int8 with the ranges it
    learned; a float model is quantized post-training from `representative_data`.
    The conversion goes through an exported SavedModel. In "int8" mode every op
    must run in integer arithmetic: float ops left by the converter are named
    (with their tensors, which carry the layer names) in a ValueError. With
    `validate`, the file runs in LiteRT's interpreter on held samples and is
    compared with the Keras model (max abs error, SQNR, top-1 agreement); a
    mismatch past the thresholds raises (or warns). The file is written only
    when everything passed, atomically.

    Args:
        model: a built single-input Keras 3 model (float or QAT).
        path: where to write the .tflite file (its folder must exist); None
            writes nothing.
        quantization: "int8" (full integer), "int16x8" (int16 activations, int8
            weights), "float16", "dynamic" (int8 weights, float activations), or
            None (float32).
        representative_data: calibration samples for a float model in "int8" /
            "int16x8" mode: a numpy array, a `tf.data.Dataset` or a generator
            (of inputs or `(x, y)` pairs). At most `max_samples` are used.
        input_type: "int8" (default in "int8" mode), "uint8", "int16" (default in
            "int16x8" mode) or "float32".
        output_type: as `input_type`.
        validate: compare the file with the Keras model before returning.
        validation_data: samples to validate on; default: representative samples
            beyond those used for calibration, else the calibration samples.
        max_samples: most samples used for calibration, and for validation.
        min_sqnr_db: SQNR threshold; default depends on the mode (int8: 12 dB).
        min_top1_agreement: top-1 agreement threshold for classifiers (int8: 0.95).
        on_mismatch: "raise" (default) or "warn" when validation fails.
        allow_float_ops: in "int8" mode, accept float ops left by the converter.
        verbose: print the validation report.

    Returns:
        The model as `TFLiteModel` bytes, with `.report` (a `ValidationReport`
        or None) and `.path`.

    Example:

    ```python
    data = np.random.rand(64, 8).astype("float32")
    tflite = kopt.convert.to_tflite(model, representative_data=data, min_top1_agreement=0.5)
    print(tflite.report)
    ```
    """
    _check_arguments(model, path, quantization, input_type, output_type, on_mismatch)
    integer_mode = quantization in ("int8", "int16x8")
    default_type = {"int8": "int8", "int16x8": "int16"}.get(quantization, "float32")
    input_type = input_type or default_type
    output_type = output_type or default_type
    input_shape = tuple(model.inputs[0].shape)
    qat = is_quantization_aware(model)

    samples = None
    if representative_data is not None:
        samples = collect_samples(representative_data, input_shape, "representative_data", 2 * max_samples)
    held = None
    if validation_data is not None:
        held = collect_samples(validation_data, input_shape, "validation_data", max_samples)

    calibration = None
    if integer_mode and not qat:
        if samples is None:
            raise ValueError(
                f"quantization={quantization!r} of a float model needs `representative_data` (100-500 typical "
                "inputs) to calibrate the ranges. Or train it with kopt.quantization.quantize_model first.")
        calibration = samples[:max_samples]
        if held is None:
            held = samples[max_samples:] if len(samples) > max_samples else calibration
    elif held is None and samples is not None:
        held = samples[:max_samples]

    content = _convert(model, quantization, calibration, input_type, output_type)

    if quantization == "int8" and not allow_float_ops:
        info = inspect(content)
        if info.float_ops:
            raise ValueError(
                "The converter left float ops in quantization='int8' mode, so the model is not full integer: "
                + ", ".join(f"{op} (tensor '{name}')" for op, name in info.float_ops)
                + ". Quantize those layers (a QuantizeConfig for custom layers), or pass allow_float_ops=True.")

    report = None
    if validate:
        if held is None:
            if not qat:
                raise ValueError("validate=True needs `validation_data` (or `representative_data`) to compare "
                                 "the file with the model on; or pass validate=False.")
            held = _samples_in_input_range(model, input_shape, max_samples)
            warnings.warn("No validation_data: validated on random inputs within the QAT input range.", stacklevel=2)
        report = validate_lib.compare(model, content, held, quantization, min_sqnr_db, min_top1_agreement)
        if verbose:
            print(report)
        if not report.passed:
            message = f"The TFLite model does not match the Keras model: {report}"
            if on_mismatch == "raise":
                raise ValueError(message + ". Nothing was written. Pass on_mismatch='warn' to keep it anyway.")
            warnings.warn(message, stacklevel=2)

    result = TFLiteModel(content)
    result.report = report
    if path is not None:
        _write_atomically(os.fspath(path), content)
        result.path = os.fspath(path)
    return result


def _samples_in_input_range(model, input_shape, count):
    from kopt.quantization import QuantizeLayer

    low, high = 0.0, 1.0
    for layer in walk_layers(model):
        if isinstance(layer, QuantizeLayer):
            low = float(keras.ops.convert_to_numpy(layer._state["min"]))
            high = float(keras.ops.convert_to_numpy(layer._state["max"]))
            break
    shape = (count,) + tuple(d if d is not None else 1 for d in input_shape[1:])
    return np.random.default_rng(0).uniform(low, high, size=shape).astype("float32")
