"""`to_tflite`: Keras 3 model -> .tflite (float, float16, dynamic, int16x8 or full int8), validated."""

import logging
import os

from kopt._keras.precision import as_float32
from kopt.convert import samples as data_lib
from kopt.convert import _litert as litert
from kopt.convert import validation as validation_lib
from kopt.convert._converter import tflite_converter
from kopt.convert._files import TFLiteModel, write_atomically
from kopt.convert._qat_state import check_calibrated, is_quantization_aware
from kopt.errors import ConversionError

__all__ = ["TFLiteModel", "compare", "to_tflite"]

logger = logging.getLogger("kopt")

MODES = (None, "float16", "dynamic", "int8", "int16x8")
_INT_TYPES = {"int8": "int8", "uint8": "uint8", "int16": "int16"}


def _check_arguments(model, path, quantization, input_type, output_type, on_mismatch, max_samples):
    data_lib.check_convertible(model, path, on_mismatch, max_samples)
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


def _float_ops_message(float_ops, qat, calibrated, shown=8):
    listed = ", ".join(f"{op} (tensor '{name}')" for op, name in float_ops[:shown])
    more = f" and {len(float_ops) - shown} more" if len(float_ops) > shown else ""
    head = (f"The converter left {len(float_ops)} float ops in quantization='int8' mode, so the file is not full "
            f"integer: {listed}{more}. Tensor names carry the Keras layer names.")
    if qat and not calibrated:
        return (head + " These tensors have no range the QAT model learned: they are computed inside layers, "
                "between the quantized ones (e.g. attention scores inside MultiHeadAttention or a custom layer). "
                "Pass representative_data (100-500 typical inputs): the converter calibrates only those tensors "
                "and keeps every QAT range. Or pass allow_float_ops=True to keep them float.")
    return (head + " TFLite has no int8 kernel for these ops, or no range reached them: leave those layers float "
            "(quantize_model(..., float_layers=[...]) or a QuantizeConfig for a custom layer), convert with "
            "quantization='int16x8', or pass allow_float_ops=True.")


def _convert(model, quantization, calibration, input_type, output_type):
    import tensorflow as tf

    with tflite_converter(model, quantization, calibration) as converter:
        if quantization in ("int8", "int16x8"):
            converter.inference_input_type = getattr(tf, input_type)
            converter.inference_output_type = getattr(tf, output_type)
        try:
            return converter.convert()
        except Exception as error:  # the converter's ConverterError, or an error of the MLIR pass it runs
            raise ConversionError(
                f"TFLite's converter cannot convert `model` ('{model.name}') with quantization={quantization!r}: "
                f"{type(error).__name__}: {error}".rstrip()) from error


def _patterns(value, argument):
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple, set)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"`{argument}` must be a list of layer names or regular expressions, got {value!r}.")
    return list(value)


def _check_mixed(keep_float, int16_activations, quantization, input_type, output_type, qat):
    keep_float = _patterns(keep_float, "keep_float")
    int16 = _patterns(int16_activations, "int16_activations")
    if not (keep_float or int16):
        return keep_float, int16
    argument = "int16_activations" if int16 else "keep_float"
    if quantization != "int8":
        raise ValueError(
            f"`{argument}` needs quantization='int8' (mixed precision inside an int8 file), got {quantization!r}. "
            "quantization='int16x8' is int16 activations everywhere (TFLite's converter has no denylist in that "
            "mode), and float modes are float already.")
    if int16 and qat:
        raise ValueError(
            "`int16_activations` is post-training: a QAT model learned int8 ranges for its layers. Convert the "
            "float model with int16_activations=[...], or keep those layers float in QAT "
            "(quantize_model(..., float_layers=[...])) and pass keep_float=[...].")
    if int16 and (input_type or "int8") != "int8" or int16 and (output_type or "int8") != "int8":
        raise ValueError(
            f"With `int16_activations`, inputs and outputs are int8 (AI Edge Quantizer quantizes them), got "
            f"input_type={input_type!r} and output_type={output_type!r}: leave them None or 'int8'.")
    if (input_type or "int8") != (output_type or "int8"):
        raise ValueError(
            f"With `keep_float`, input_type and output_type must be the same ('int8' or 'float32'), got "
            f"{input_type!r} and {output_type!r}.")
    if (input_type or "int8") not in ("int8", "float32"):
        raise ValueError(f"With `keep_float`, input_type must be 'int8' or 'float32', got {input_type!r}.")
    return keep_float, int16


def _input_shapes(model, samples):
    """Each signature input's shape without the batch dimension, from the samples (for timing a file whose
    shapes are open, e.g. a sequence length)."""
    if samples is None:
        return None
    return {spec.name: tuple(s.shape[1:]) for spec, s in zip(data_lib.model_inputs(model), samples)}


def _convert_mixed(model, calibration, keep_float, int16, fully_quantize, held):
    """The int8 file of float `model` with the layers `keep_float` selects left float and those `int16` selects
    with int16 activations, and its report."""
    from kopt.convert import mixed_precision
    from kopt.convert._selective import SelectiveQuantizer, layers_in, resolve_layers

    try:
        if int16:  # int8 and int16 activations in one file: AI Edge Quantizer
            from kopt.convert._edge_quantizer import EdgeQuantizer

            quantizer = EdgeQuantizer(model, calibration)
            kept = resolve_layers(keep_float, quantizer.layers, model.name, "keep_float") if keep_float else []
            wide = resolve_layers(int16, quantizer.layers, model.name, "int16_activations")
            both = sorted(set(kept) & set(wide))
            if both:
                raise ValueError(f"`keep_float` and `int16_activations` both select {both}: choose one for each.")
            coded = quantizer.quantize(wide, kept)
            int8 = quantizer.decode(quantizer.quantize())
            codes = quantizer.codes
        else:  # int8 and float: TFLite's selective quantization
            wide = []
            with SelectiveQuantizer(model, calibration, fully_quantize=fully_quantize) as quantizer:
                kept = quantizer.resolve(keep_float, "keep_float")
                coded = quantizer.quantize(kept)
                int8 = quantizer.decode(quantizer.quantize([]))
                codes = quantizer.codes
    except (ValueError, ImportError):
        raise
    except Exception as error:
        raise ConversionError(f"Mixed precision cannot convert `model` ('{model.name}') with keep_float="
                              f"{keep_float!r}, int16_activations={int16!r}: {type(error).__name__}: {error}".rstrip()
                              ) from error
    from kopt.convert._selective import decode_file, decode_name

    ops, boundary = mixed_precision.non_int8_ops(coded, lambda tensor: layers_in(tensor, codes),
                                                 lambda tensor: decode_name(tensor, codes))
    content = decode_file(coded, codes)
    latency, int8_latency = mixed_precision.interleaved_latency([content, int8], _input_shapes(model, held))
    logger.info("kept float: %s; int16 activations: %s (%d ops not int8)", ", ".join(kept) or "-",
                ", ".join(wide) or "-", len(ops))
    return content, mixed_precision.MixedPrecisionReport(kept, ops, boundary, len(content), len(int8), latency,
                                                         int8_latency, int16=wide)


def _qat_mixed(model, converted, content, keep_float):
    """The report of a QAT model's file for `keep_float`: the layers must be ones QAT left float."""
    import re

    from kopt._keras.clone import walk_layers
    from kopt.convert import mixed_precision
    from kopt.convert._selective import layers_in, output_layers
    from kopt.quantization import QuantizeWrapper

    wrapped = {layer.layer.name for layer in walk_layers(model) if isinstance(layer, QuantizeWrapper)}
    names = [layer.name for layer in walk_layers(model) if not isinstance(layer, QuantizeWrapper)] + sorted(wrapped)
    kept = []
    for pattern in keep_float:
        matched = [n for n in names if n == pattern or re.fullmatch(pattern, n)]
        if not matched:
            raise ValueError(f"`keep_float`: {pattern!r} matches no layer of '{model.name}'.")
        quantized = [n for n in matched if n in wrapped]
        if quantized:
            raise ValueError(
                f"`keep_float`: {quantized} are quantized in this QAT model, so their int8 ranges are part of "
                "what it learned. Quantize the float model with kopt.quantization.quantize_model(model, "
                f"float_layers={quantized!r}) and fit it; then keep_float accepts their float ops.")
        kept.extend(n for n in matched if n not in kept)
    outputs = output_layers(converted, lambda layer: layer.layer.name if isinstance(layer, QuantizeWrapper)
                            else layer.name)
    ops, boundary = mixed_precision.non_int8_ops(
        content, lambda tensor: layers_in(tensor, outputs) or data_lib.layers_named_in(converted, [tensor]),
        lambda tensor: tensor)
    return mixed_precision.MixedPrecisionReport(kept, ops, boundary, len(content))


def compare(model, tflite, x, mode, min_sqnr_db=None, min_top1_agreement=None, quantization_aware=None,
            synthetic=False):
    """Runs `model` and its .tflite file (in LiteRT) on `x` and returns a `ValidationReport` (every output).

    Args:
        model: the Keras model the file came from.
        tflite: the .tflite bytes or path (made from `model.export`, so its
            signature names the inputs and outputs).
        x: the samples: an array (single input), a list of arrays in
            `model.inputs` order, or a dict keyed by input name.
        mode: the conversion mode, for the default thresholds.
        min_sqnr_db: SQNR threshold; None: the default for `mode` and source.
        min_top1_agreement: decisive top-1 threshold; None: the default.
        quantization_aware: whether `model` is a QAT model; None: detect.
        synthetic: record that `x` is synthetic.

    Returns:
        A `ValidationReport`.
    """
    inputs, samples, quantization_aware, keys, labels, references = validation_lib.reference_outputs(
        model, x, quantization_aware)
    input_names, output_names = litert.signature_names(tflite)
    expected_inputs = [i.name for i in inputs]
    if sorted(input_names) != sorted(expected_inputs) or sorted(output_names) != sorted(keys):
        raise ValueError(
            f"The .tflite signature (inputs {input_names}, outputs {output_names}) does not match the Keras model "
            f"(inputs {expected_inputs}, outputs {keys}), so outputs cannot be compared by name. Convert the file "
            "with kopt.convert.to_tflite from this model.")
    got = litert.run_signature(tflite, {i.name: s for i, s in zip(inputs, samples)})
    scales = litert.output_scales(tflite)
    outputs = [validation_lib.compare_output(label, reference, got[key], scales.get(key, 0.0))
               for key, label, reference in zip(keys, labels, references)]
    return validation_lib.summarize(outputs, data_lib.count(samples), mode, quantization_aware,
                                    litert.count_ops(tflite), min_sqnr_db, min_top1_agreement, synthetic)


def to_tflite(model, path=None, *, quantization="int8", representative_data=None, input_type=None,
              output_type=None, validate=True, validation_data=None, max_samples=300, min_sqnr_db=None,
              min_top1_agreement=None, on_mismatch="raise", allow_float_ops=False, keep_float=None,
              int16_activations=None, verbose=False):
    """Converts a Keras 3 model to TFLite and checks the file against the model.

    A QAT model (from `kopt.quantization`) converts to int8 with the ranges it
    learned; a float model is quantized post-training from `representative_data`.
    The conversion goes through an exported SavedModel. In "int8" mode every op
    must run in integer arithmetic: float ops left by the converter raise a
    `kopt.errors.ConversionError` naming them and their layers. With
    `validate`, the file runs in LiteRT's interpreter on held samples and every
    output is compared with the Keras output of the same name (SQNR, max abs
    error, and top-1 agreement on samples whose reference top-1 is decisive,
    see `kopt.convert.validation`); if any output misses a threshold, this
    raises a `kopt.errors.ValidationError` (or warns). The file is written
    only when everything passed, atomically.

    Default thresholds depend on where the int8 ranges come from. A QAT file
    differs from its QAT model only by integer rounding, which compounds with
    depth: int8 QAT files must reach 35 dB less 0.35 dB per op of the file, at
    least 12 dB, and 95% decisive top-1. Post-training int8 files: 12 dB, 95%.
    Float modes: None 50 dB, float16 35 dB, dynamic and int16x8 20 dB.
    `report.source`, `report.min_sqnr_db` and `str(report)` say which applied
    (see `kopt.convert.validation.default_thresholds`; the measurements behind
    them: benchmarks/RESULTS.md, "Validation thresholds").

    Models with several inputs and outputs work: give data as a list of arrays
    (in `model.inputs` order) or a dict keyed by input name, or a dataset /
    generator yielding such lists, dicts or `(inputs, targets)` pairs.

    Args:
        model: a built Keras 3 model (float or QAT), with one or more inputs
            and outputs.
        path: where to write the .tflite file (its folder must exist); None
            writes nothing.
        quantization: "int8" (full integer), "int16x8" (int16 activations, int8
            weights), "float16", "dynamic" (int8 weights, float activations), or
            None (float32).
        representative_data: calibration samples for a float model in "int8" /
            "int16x8" mode (for a QAT model: for the tensors inside custom
            layers that no QAT range covers; its trained ranges are kept): a numpy array (a list or dict of arrays for several
            inputs), a `tf.data.Dataset` or a generator (of inputs or
            `(x, y)` pairs). At most `max_samples` are used.
        input_type: "int8" (default in "int8" mode), "uint8", "int16" (default in
            "int16x8" mode) or "float32".
        output_type: as `input_type`.
        validate: compare the file with the Keras model before returning.
        validation_data: samples to validate on (same forms as
            `representative_data`); default: representative samples beyond those
            used for calibration, else the calibration samples; with no data at
            all (float modes, QAT models), up to 100 synthetic samples (uniform
            in [0, 1), or in a QAT model's input range), with a warning.
        max_samples: most samples used for calibration, and for validation.
        min_sqnr_db: SQNR threshold for every output; default by mode and source
            (see above).
        min_top1_agreement: decisive top-1 agreement threshold for classifier
            outputs; default by mode and source.
        on_mismatch: "raise" (default) or "warn" when validation fails.
        allow_float_ops: in "int8" mode, accept float ops left by the converter.
        keep_float: Keras layer names or regular expressions (matched in full) of layers to keep float in "int8"
            mode (mixed precision, e.g. the first rows of `kopt.analysis.sensitivity`). Layers inside nested
            models and custom layers can be named. Their ops compute in float between DEQUANTIZE and QUANTIZE
            ops (TFLite's selective quantization: `QuantizationDebugOptions(denylisted_nodes=...)`); the rest
            stays int8 with the same calibration. `.mixed_precision` lists the ops that are not int8 and what
            they cost against the all-int8 file (size; latency measured in the same run). Inputs and outputs
            must both be int8 or both float32. For a QAT model, the layers must be ones QAT left float
            (`quantize_model(..., float_layers=[...])`); their float ops are then accepted.
        int16_activations: Keras layer names or regular expressions of layers to run with int16 activations
            (int8 weights) in "int8" mode, the rest int8: for layers whose activations need more than 256
            levels. TFLite's converter gives a whole file one activation type, so this goes through Google's AI
            Edge Quantizer (`pip install 'kopt[mixed]'`), from the float file, with the same calibration data
            (ranges merged as min/max); QUANTIZE ops requantize between int8 and int16. A layer that reads an
            int16 tensor requantizes it to int8 unless it is listed too. Inputs and outputs stay quantized
            (`input_type`/`output_type` None or "int8"); `keep_float` may be combined (other layers). Float
            models only (a QAT model learned int8 ranges). int16 kernels do not use XNNPACK: they are slower.
        verbose: print the validation report.

    Returns:
        The model as `TFLiteModel` bytes, with `.report` (a `ValidationReport`
        or None), `.path`, and `.mixed_precision` (a
        `kopt.convert.mixed_precision.MixedPrecisionReport` with `keep_float`, else None).

    Raises:
        ValueError: bad arguments or data; a QAT model whose activation ranges
            no training step has set (fit it first).
        kopt.errors.ConversionError: the converter fails, or leaves float ops
            in "int8" mode (`.ops` and `.layers` name them).
        kopt.errors.ValidationError: the file does not match the model
            (`on_mismatch="raise"`); `.report` says by how much.

    Example:

    ```python
    data = np.random.rand(64, 8).astype("float32")
    tflite = kopt.convert.to_tflite(model, representative_data=data, min_top1_agreement=0.5)
    print(tflite.report)
    ```

    Several inputs, data keyed by input name (or a list in `model.inputs` order):

    ```python
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    data = {"a": np.random.rand(64, 4).astype("float32"), "b": np.random.rand(64, 3).astype("float32")}
    tflite = kopt.convert.to_tflite(two, representative_data=data, min_top1_agreement=0.5)
    ```

    Mixed precision: the last layer kept float, the rest int8.

    ```python
    data = np.random.rand(64, 8).astype("float32")
    tflite = kopt.convert.to_tflite(model, representative_data=data, keep_float=[model.layers[-1].name],
                                    min_top1_agreement=0.5)
    print(tflite.mixed_precision)
    ```
    """
    _check_arguments(model, path, quantization, input_type, output_type, on_mismatch, max_samples)
    model = as_float32(model)  # trained under mixed precision: export (and validate) in float32
    integer_mode = quantization in ("int8", "int16x8")
    default_type = {"int8": "int8", "int16x8": "int16"}.get(quantization, "float32")
    input_type = input_type or default_type
    output_type = output_type or default_type
    inputs = data_lib.model_inputs(model)
    qat = is_quantization_aware(model)
    keep_float, int16 = _check_mixed(keep_float, int16_activations, quantization, input_type, output_type, qat)
    if qat:
        check_calibrated(model)

    samples = None
    if representative_data is not None:
        samples = data_lib.collect_inputs(representative_data, inputs, "representative_data", 2 * max_samples)
    held = None
    if validation_data is not None:
        held = data_lib.collect_inputs(validation_data, inputs, "validation_data", max_samples)

    calibration = None
    if integer_mode and not qat:
        if samples is None:
            raise ValueError(
                f"quantization={quantization!r} of a float model needs `representative_data` (100-500 typical "
                "inputs) to calibrate the ranges. Or train it with kopt.quantization.quantize_model first.")
        calibration = data_lib.take(samples, 0, max_samples)
        if held is None:
            held = data_lib.take(samples, max_samples) if data_lib.count(samples) > max_samples else calibration
    elif integer_mode and samples is not None:
        # A QAT model keeps its trained ranges (measured: every FakeQuant range is unchanged); the
        # converter calibrates only the tensors that no QAT range covers (inside custom layers).
        calibration = data_lib.take(samples, 0, max_samples)
        if held is None:
            held = data_lib.take(samples, max_samples) if data_lib.count(samples) > max_samples else calibration
    elif held is None and samples is not None:
        held = data_lib.take(samples, 0, max_samples)

    converted = model
    if integer_mode and not qat:
        from kopt.quantization import with_integer_forms

        converted = with_integer_forms(model)  # e.g. LayerNormalization without NEG; same function
    # Keyed by the converted model's input names (its SavedModel signature): a rewritten graph names its
    # inputs after the input layers, which an unnamed keras.Input names apart from its tensor.
    named = None if calibration is None else {
        spec.name: s for spec, s in zip(data_lib.model_inputs(converted), calibration)}
    calibrating = f", calibrating on {data_lib.count(calibration)} samples" if calibration is not None else ""
    logger.info("converting '%s' to %s%s", model.name, quantization or "float32", calibrating)
    mixed = None
    if (keep_float or int16) and not qat:
        content, mixed = _convert_mixed(converted, calibration, keep_float, int16, input_type == "int8", held)
    else:
        content = _convert(converted, quantization, named, input_type, output_type)
        if keep_float:
            mixed = _qat_mixed(model, converted, content, keep_float)
    logger.info("converted: %s bytes", f"{len(content):,}")

    if quantization == "int8" and not allow_float_ops:
        float_ops = litert.inspect_tflite(content).float_ops
        if mixed is not None:  # the kept layers' ops, and the QUANTIZE/DEQUANTIZE around them
            # (and shape arithmetic reading a float tensor: AI Edge Quantizer leaves Flatten's SHAPE on the float
            # side of a DEQUANTIZE; it computes no activation)
            kept = {op["tensor"] for op in mixed.ops
                    if set(op["layers"]) & set(mixed.kept_float) or op["dtype"] in ("int32", "int64")}
            float_ops = [(op, name) for op, name in float_ops if name not in kept and op != "DEQUANTIZE"]
        if float_ops:
            raise ConversionError(_float_ops_message(float_ops, qat, calibration is not None),
                                  ops=sorted({op for op, _ in float_ops}),
                                  layers=data_lib.layers_named_in(converted, [name for _, name in float_ops]))

    report = None
    if validate:
        report = validation_lib.check_against_model(
            model, inputs, held, lambda samples, synthetic: compare(
                model, content, samples, quantization, min_sqnr_db, min_top1_agreement, quantization_aware=qat,
                synthetic=synthetic),
            "TFLite", quantization_aware=qat, max_samples=max_samples, verbose=verbose, on_mismatch=on_mismatch)

    result = TFLiteModel(content)
    result.report = report
    result.mixed_precision = mixed
    if verbose and mixed is not None:
        print(mixed)
    if path is not None:
        write_atomically(path, content)
        result.path = os.fspath(path)
    return result
