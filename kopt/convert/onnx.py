"""`to_onnx`: Keras 3 model -> ONNX (float, or QDQ int8 from a QAT model), validated in onnxruntime."""

import contextlib
import logging
import os
import tempfile
import warnings

import keras
import numpy as np

from kopt._keras.precision import as_float32
from kopt._keras.tracing import traceable_for_tf2onnx
from kopt.convert import samples as data_lib
from kopt.convert import _onnx_info as onnx_info
from kopt.convert import _onnx_weights as onnx_weights
from kopt.convert import _onnxruntime as runtime
from kopt.convert import validation as validation_lib
from kopt.convert._files import ONNXModel, write_atomically
from kopt.convert._qat_state import check_calibrated, is_quantization_aware
from kopt.errors import ConversionError

__all__ = ["ONNXModel", "compare", "to_onnx"]

# QuantizeLinear/DequantizeLinear came with opset 10, but onnxruntime fuses QDQ graphs with Round (opset 11):
# a QAT model exported at opset 10 does not load.
MIN_OPSET = 11
logger = logging.getLogger("kopt")


def max_opset():
    """The newest ONNX opset the installed tf2onnx converts to (18 for tf2onnx 1.17)."""
    from tf2onnx import constants

    return max(constants.OPSET_TO_IR_VERSION)


def _check_arguments(model, path, opset, on_mismatch, max_samples):
    data_lib.check_convertible(model, path, on_mismatch, max_samples)
    if opset is not None:
        newest = max_opset()
        if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= newest:
            raise ValueError(f"`opset` must be an integer from {MIN_OPSET} to {newest} (what tf2onnx converts to), "
                             f"got {opset!r}. Use None for tf2onnx's default (15).")


def _input_signature(model):
    """The input signature `model.export(format="onnx")` traces, from the model's inputs.

    Keras infers it only for a model that was called; built from `model.inputs` (a Sequential model takes them
    as positional arguments, a Functional model its input structure as one argument, as Keras's own inference
    does), an uncalled model exports too. The batch dimension stays dynamic.
    """
    def spec(tensor):
        return keras.InputSpec(shape=(None, *tensor.shape[1:]), dtype=tensor.dtype, name=tensor.name)

    if isinstance(model, keras.Sequential):
        return [spec(t) for t in model.inputs]
    try:
        structure = model.input
    except (AttributeError, ValueError):
        structure = list(model.inputs)
    return [keras.tree.map_structure(spec, structure)]


@contextlib.contextmanager
def _quiet(verbose):
    """tf2onnx logs each op it cannot convert as an error; kopt raises a ConversionError naming them instead."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # Keras's numpy-2 patch of tf2onnx probes np.object, which warns.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*np.object.*")
            yield
    finally:
        logger.setLevel(level)


def _export(model, opset, verbose=False):
    """The ONNX bytes of `model`, from Keras's own `model.export(format="onnx")` (tf2onnx's `from_function`)."""
    with tempfile.TemporaryDirectory(prefix="kopt-onnx-") as folder:
        target = os.path.join(folder, "model.onnx")
        try:
            with _quiet(verbose), traceable_for_tf2onnx(model):
                model.export(target, format="onnx", verbose=False, input_signature=_input_signature(model),
                             opset_version=opset)
        except Exception as error:
            raise ConversionError(
                f"tf2onnx could not convert `model` ('{model.name}') to ONNX (opset {opset or 'default'}): "
                f"{type(error).__name__}: {error}. Node names carry the Keras layer names. Rewrite that layer with "
                "ops tf2onnx supports, or try another `opset`.") from error
        with open(target, "rb") as f:
            return f.read()


def _check_converted(content, model, opset):
    """Raises a ConversionError naming the ops tf2onnx left unconverted, or what makes the file invalid ONNX."""
    import onnx

    unknown = onnx_info.unknown_ops(content)
    if unknown:
        ops = sorted({op for op, _ in unknown})
        nodes = ", ".join(f"{op} (node '{name}')" for op, name in unknown[:8])
        layers = data_lib.layers_named_in(model, [name for _, name in unknown])
        raise ConversionError(
            f"`model` ('{model.name}') uses TensorFlow ops that tf2onnx cannot convert to ONNX "
            f"(opset {opset or 'default'}): {', '.join(ops)}. Unconverted: {nodes}"
            f"{' ...' if len(unknown) > 8 else ''}"
            f"{'; in layers ' + ', '.join(layers) if layers else ''}. Rewrite those layers "
            "with ops ONNX has (see tf2onnx's support_status.md), or convert with kopt.convert.to_tflite.",
            ops=ops, layers=layers)
    proto = onnx_info.load(content)
    initializers = {t.name for t in proto.graph.initializer}
    expected = {i.name for i in data_lib.model_inputs(model)}
    extra = [i.name for i in proto.graph.input if i.name not in initializers and i.name not in expected]
    if extra:
        raise ConversionError(
            f"The ONNX file of `model` ('{model.name}') has inputs the model does not have: {extra}. They are "
            "tensors a layer holds outside its weights, which the traced function captured and tf2onnx left as "
            "inputs. Hold them in the layer as weights (add_weight) or as NumPy arrays.")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ConversionError(
            f"The ONNX file tf2onnx made from `model` ('{model.name}') is not valid ONNX: {error}") from None


def compare(model, content, x, min_sqnr_db=None, min_top1_agreement=None, quantization_aware=None,
            synthetic=False):
    """Runs `model` and its ONNX file (in onnxruntime) on `x` and returns a `ValidationReport` (every output).

    Inputs are matched by name (the names of the model's `keras.Input`s, which
    `model.export` gives the ONNX inputs); outputs by name when the file's are
    the Keras output keys (dict outputs), else in order. The figures and the
    verdict are those of `kopt.convert.validation`; a QAT model's file is held to
    the QAT int8 defaults with its QuantizeLinear nodes on activations as
    depth.

    Args:
        model: the Keras model the file came from.
        content: the ONNX bytes or path.
        x: the samples: an array (single input), a list of arrays in
            `model.inputs` order, or a dict keyed by input name.
        min_sqnr_db: SQNR threshold; None: the default.
        min_top1_agreement: decisive top-1 threshold; None: the default.
        quantization_aware: whether `model` is a QAT model; None: detect.
        synthetic: record that `x` is synthetic.

    Returns:
        A `ValidationReport` (`file_format="ONNX"`).
    """
    content = onnx_info.read_onnx(content)
    inputs, samples, quantization_aware, keys, labels, references = validation_lib.reference_outputs(
        model, x, quantization_aware)

    runner = runtime.session(content)
    file_inputs = [i.name for i in runner.get_inputs()]
    file_outputs = [o.name for o in runner.get_outputs()]
    expected = [i.name for i in inputs]
    if sorted(file_inputs) != sorted(expected) or len(file_outputs) != len(keys):
        raise ValueError(
            f"The ONNX model (inputs {file_inputs}, outputs {file_outputs}) does not match the Keras model "
            f"(inputs {expected}, {len(keys)} outputs), so they cannot be compared. Convert the file with "
            "kopt.convert.to_onnx from this model.")
    got = runtime.run(runner, {i.name: s for i, s in zip(inputs, samples)})
    if sorted(file_outputs) == sorted(keys):  # dict outputs, named by their keys
        pairs = list(zip(keys, keys))
    else:  # in order: the flattened outputs (a dict's sorted keys, as tf.nest flattens it)
        listed = keys == [f"output_{i}" for i in range(len(keys))]
        pairs = list(zip(file_outputs, keys if listed else sorted(keys)))
    scales = onnx_info.output_scales(content)
    outputs = [validation_lib.compare_output(labels[keys.index(key)], references[keys.index(key)], got[name],
                                           scales.get(name, 0.0), "ONNX file")
               for name, key in pairs]
    return validation_lib.summarize(
        outputs, data_lib.count(samples), "int8" if quantization_aware else None, quantization_aware,
        onnx_info.activation_quantizers(content), min_sqnr_db, min_top1_agreement, synthetic, file_format="ONNX")


def to_onnx(model, path=None, *, opset=None, validate=True, validation_data=None, max_samples=300,
            min_sqnr_db=None, min_top1_agreement=None, on_mismatch="raise", verbose=False):
    """Converts a Keras 3 model to ONNX and checks the file in onnxruntime against the model.

    The export is Keras's own `model.export(path, format="onnx")` (tf2onnx's
    `from_function`), with the input signature taken from `model.inputs`, so a
    model that was never called exports too. A model trained under a mixed
    precision policy exports as a float32 copy with the same weights.

    A QAT model (from `kopt.quantization`) exports as a QDQ model: every
    activation range it learned becomes a QuantizeLinear/DequantizeLinear pair
    (uint8), and its weights are 8-bit initializers on the QAT model's own
    grid (uint8 around zero point 128, per output channel for convolutions
    from opset 13) read through a DequantizeLinear, the form onnxruntime
    computes exactly on x86 with or without VNNI and on ARM (see
    `kopt.convert._onnx_weights`).

    With `validate`, the file runs in onnxruntime (CPU, default graph
    optimizations) on held samples and every output is compared with the
    Keras output (SQNR, max abs error, and top-1 agreement on samples whose
    reference top-1 is decisive, see `kopt.convert.validation`). If any output
    misses a threshold, this raises a `kopt.errors.ValidationError` and writes
    nothing (with `on_mismatch="warn"` it warns and writes the file anyway).
    Files are written atomically.

    Default thresholds: a float model's file must compute the same function
    up to float rounding (SQNR >= 50 dB, 99.9% decisive top-1); a QAT model's
    file gets the QAT int8 defaults of `to_tflite`, with its QuantizeLinear
    nodes on activations (`report.ops`) as its depth. The measurements behind
    them are in benchmarks/RESULTS.md ("Validation thresholds", "ONNX export").

    Args:
        model: a built Keras 3 model (float or QAT) with known inputs (a
            `keras.Input`), one or more inputs and outputs.
        path: where to write the .onnx file (its folder must exist); None
            writes nothing.
        opset: the ONNX opset, from 11 to the newest tf2onnx converts to (18);
            None: tf2onnx's default (15). A QAT model's convolution weights
            get per-channel scales from opset 13 (DequantizeLinear's `axis`);
            at 11-12 they stay float and onnxruntime quantizes them per tensor,
            which agrees less closely with the QAT model.
        validate: compare the file with the Keras model before returning.
        validation_data: samples to validate on: a numpy array (a list or dict
            of arrays for several inputs), a `tf.data.Dataset` or a generator
            (of inputs or `(x, y)` pairs); at most `max_samples` are used.
            None: up to 100 synthetic samples (uniform in [0, 1), or in a QAT
            model's input range), with a warning.
        max_samples: most samples used for validation.
        min_sqnr_db: SQNR threshold for every output; default as above.
        min_top1_agreement: decisive top-1 agreement threshold for classifier
            outputs; default as above.
        on_mismatch: "raise" (default) or "warn" when validation fails.
        verbose: print the validation report (and tf2onnx's log).

    Returns:
        The model as `ONNXModel` bytes, with `.report` (a `ValidationReport`
        or None) and `.path`.

    Raises:
        ImportError: tf2onnx, onnx or onnxruntime is missing (`pip install
            "kopt-keras[onnx]"`).
        ValueError: bad arguments or data; a QAT model whose activation ranges
            no training step has set.
        kopt.errors.ConversionError: tf2onnx cannot convert the model (the ops
            and layers are named in `.ops` and `.layers`).
        kopt.errors.ValidationError: the file does not match the model
            (`on_mismatch="raise"`); `.report` says by how much.

    Example:

    ```python
    data = np.random.rand(64, 8).astype("float32")
    onnx_model = kopt.convert.to_onnx(model, "model.onnx", validation_data=data)
    print(onnx_model.report)
    print(kopt.convert.inspect("model.onnx"))
    ```

    A QAT model exports as QDQ (QuantizeLinear/DequantizeLinear) int8:

    ```python
    qat = kopt.quantization.quantize_model(model)
    qat(np.random.rand(64, 8).astype("float32"), training=True)  # sets the ranges (or fit it)
    onnx_model = kopt.convert.to_onnx(qat, validation_data=np.random.rand(64, 8).astype("float32"),
                                      min_top1_agreement=0.5)
    print(kopt.convert.inspect(onnx_model).op_counts["QuantizeLinear"])
    ```
    """
    runtime.require()
    _check_arguments(model, path, opset, on_mismatch, max_samples)
    model = as_float32(model)  # trained under mixed precision: export (and validate) in float32
    inputs = data_lib.model_inputs(model)
    qat = is_quantization_aware(model)
    if qat:
        check_calibrated(model)
    held = None
    if validation_data is not None:  # bad data fails here, before the export
        held = data_lib.collect_inputs(validation_data, inputs, "validation_data", max_samples)

    logger.info("exporting '%s' to ONNX%s", model.name, f" (opset {opset})" if opset else "")
    content = _export(model, opset, verbose)
    logger.info("exported: %s bytes", f"{len(content):,}")
    _check_converted(content, model, opset)
    if qat:  # weights as 8-bit integers + DequantizeLinear on the QAT grid (tf2onnx leaves them float)
        content, _ = onnx_weights.quantize_weights(content)

    report = None
    if validate:
        report = validation_lib.check_against_model(
            model, inputs, held, lambda samples, synthetic: compare(
                model, content, samples, min_sqnr_db, min_top1_agreement, quantization_aware=qat,
                synthetic=synthetic),
            "ONNX", quantization_aware=qat, max_samples=max_samples, verbose=verbose, on_mismatch=on_mismatch)

    result = ONNXModel(content)
    result.report = report
    if path is not None:
        write_atomically(path, content)
        result.path = os.fspath(path)
    return result
