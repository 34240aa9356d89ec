"""`to_onnx`: Keras 3 model -> ONNX (float, or QDQ int8 from a QAT model), validated in onnxruntime."""

import contextlib
import logging
import os
import tempfile
import warnings

import keras
import numpy as np

from kopt._keras.tracing import traceable_for_tf2onnx
from kopt._keras.inputs import reject_string_inputs
from kopt._keras.precision import as_float32
from kopt.convert import data as data_lib
from kopt.convert import onnx_info, onnx_weights
from kopt.convert import validate as validate_lib
from kopt.convert.qat_state import check_calibrated, is_quantization_aware
from kopt.convert.files import ModelFile, check_folder, write_atomically

__all__ = ["ONNXModel", "compare", "to_onnx"]

# QuantizeLinear/DequantizeLinear came with opset 10, but onnxruntime fuses QDQ graphs with Round (opset 11):
# a QAT model exported at opset 10 does not load.
MIN_OPSET = 11
_INSTALL = 'pip install "kopt-keras[onnx]"'
logger = logging.getLogger("kopt")


class ONNXModel(ModelFile):
    """The bytes of an ONNX model, with the `report` of its validation and the `path` it was written to.

    Example:

    ```python
    onnx_model = kopt.convert.to_onnx(model, validate=False)
    onnx_model.save("model.onnx")
    ```
    """


def _require():
    """Imports what the ONNX path needs (tf2onnx runs inside `model.export`), with an install hint if missing."""
    missing = []
    for name in ("tf2onnx", "onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {_INSTALL}")


def max_opset():
    """The newest ONNX opset the installed tf2onnx converts to (18 for tf2onnx 1.17)."""
    from tf2onnx import constants

    return max(constants.OPSET_TO_IR_VERSION)


def _check_arguments(model, path, opset, on_mismatch, max_samples):
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a Keras 3 keras.Model, got {type(model).__module__}.{type(model).__name__}.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"`model` ('{model.name}') must be built with known inputs: give it a keras.Input (e.g. "
            "keras.Sequential([keras.Input((8,)), ...]) or a Functional model), so its input signature is known.")
    reject_string_inputs(model, "model", "convert")
    if opset is not None:
        newest = max_opset()
        if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= newest:
            raise ValueError(f"`opset` must be an integer from {MIN_OPSET} to {newest} (what tf2onnx converts to), "
                             f"got {opset!r}. Use None for tf2onnx's default (15).")
    if on_mismatch not in ("raise", "warn"):
        raise ValueError(f"`on_mismatch` must be 'raise' or 'warn', got {on_mismatch!r}.")
    if isinstance(max_samples, bool) or not isinstance(max_samples, (int, np.integer)) or max_samples < 1:
        raise ValueError(f"`max_samples` must be a positive integer, got {max_samples!r}.")
    if path is not None:
        check_folder(path)


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
    """tf2onnx logs each op it cannot convert as an error; kopt raises a ValueError naming them instead."""
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
            raise ValueError(
                f"tf2onnx could not convert `model` ('{model.name}') to ONNX (opset {opset or 'default'}): "
                f"{type(error).__name__}: {error}. Node names carry the Keras layer names. Rewrite that layer with "
                "ops tf2onnx supports, or try another `opset`.") from error
        with open(target, "rb") as f:
            return f.read()


def _check_converted(content, model, opset):
    """Raises a ValueError naming the ops tf2onnx left unconverted, or what makes the file invalid ONNX."""
    import onnx

    unknown = onnx_info.unknown_ops(content)
    if unknown:
        ops = sorted({op for op, _ in unknown})
        nodes = ", ".join(f"{op} (node '{name}')" for op, name in unknown[:8])
        raise ValueError(
            f"`model` ('{model.name}') uses TensorFlow ops that tf2onnx cannot convert to ONNX "
            f"(opset {opset or 'default'}): {', '.join(ops)}. Unconverted: {nodes}"
            f"{' ...' if len(unknown) > 8 else ''}. Node names carry the Keras layer names: rewrite those layers "
            "with ops ONNX has (see tf2onnx's support_status.md), or convert with kopt.convert.to_tflite.")
    proto = onnx_info.load(content)
    initializers = {t.name for t in proto.graph.initializer}
    expected = {i.name for i in data_lib.model_inputs(model)}
    extra = [i.name for i in proto.graph.input if i.name not in initializers and i.name not in expected]
    if extra:
        raise ValueError(
            f"The ONNX file of `model` ('{model.name}') has inputs the model does not have: {extra}. They are "
            "tensors a layer holds outside its weights, which the traced function captured and tf2onnx left as "
            "inputs. Hold them in the layer as weights (add_weight) or as NumPy arrays.")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ValueError(f"The ONNX file tf2onnx made from `model` ('{model.name}') is not valid ONNX: {error}") \
            from None


def session(content, threads=None):
    """An onnxruntime `InferenceSession` on the CPU, with its default graph optimizations (as users run it).

    Args:
        content: the ONNX bytes or a path.
        threads: intra-op threads; None: onnxruntime's default.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads:
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(onnx_info.read_onnx(content), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's InvalidGraph, NotImplemented ...: the file is of no use
        raise ValueError(f"onnxruntime {onnxruntime.__version__} cannot load the ONNX model: {error}") from None


def run(content, inputs, batch_size=256):
    """Runs an ONNX model in onnxruntime by input name, in batches.

    Args:
        content: the ONNX bytes or a path.
        inputs: dict from ONNX input name to an array; all with the same
            number of samples (cast to the input's dtype).
        batch_size: samples per run.

    Returns:
        A dict from ONNX output name to a float32 array, in the file's output
        order.
    """
    return _run(session(content), inputs, batch_size)


def _run(runner, inputs, batch_size=256):
    specs = {i.name: i for i in runner.get_inputs()}
    if set(inputs) != set(specs):
        raise ValueError(f"The ONNX model has inputs {sorted(specs)}, got {sorted(inputs)}.")
    names = [o.name for o in runner.get_outputs()]
    results = {name: [] for name in names}
    total = len(next(iter(inputs.values())))
    for start in range(0, total, batch_size):
        feed = {name: np.asarray(x[start:start + batch_size]).astype(_numpy_type(specs[name].type))
                for name, x in inputs.items()}
        for name, y in zip(names, runner.run(names, feed)):
            results[name].append(np.asarray(y).astype("float32"))
    return {name: np.concatenate(parts) for name, parts in results.items()}


def _numpy_type(ort_type):
    """onnxruntime's "tensor(float)" -> "float32"."""
    name = ort_type[len("tensor("):-1] if ort_type.startswith("tensor(") else ort_type
    return {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool"}.get(name, name)


def compare(model, content, x, min_sqnr_db=None, min_top1_agreement=None, quantization_aware=None,
            synthetic=False):
    """Runs `model` and its ONNX file (in onnxruntime) on `x` and returns a `ValidationReport` (every output).

    Inputs are matched by name (the names of the model's `keras.Input`s, which
    `model.export` gives the ONNX inputs); outputs by name when the file's are
    the Keras output keys (dict outputs), else in order. The figures and the
    verdict are those of `kopt.convert.validate`; a QAT model's file is held to
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
    inputs = data_lib.model_inputs(model)
    samples = x if isinstance(x, list) and len(x) == len(inputs) and all(
        isinstance(a, np.ndarray) for a in x) else data_lib.collect_inputs(x, inputs, "x", np.iinfo("int64").max)
    if quantization_aware is None:
        quantization_aware = is_quantization_aware(model)
    keys, labels, references = validate_lib.predict_outputs(model, samples)

    runner = session(content)
    file_inputs = [i.name for i in runner.get_inputs()]
    file_outputs = [o.name for o in runner.get_outputs()]
    expected = [i.name for i in inputs]
    if sorted(file_inputs) != sorted(expected) or len(file_outputs) != len(keys):
        raise ValueError(
            f"The ONNX model (inputs {file_inputs}, outputs {file_outputs}) does not match the Keras model "
            f"(inputs {expected}, {len(keys)} outputs), so they cannot be compared. Convert the file with "
            "kopt.convert.to_onnx from this model.")
    got = _run(runner, {i.name: s for i, s in zip(inputs, samples)})
    if sorted(file_outputs) == sorted(keys):  # dict outputs, named by their keys
        pairs = list(zip(keys, keys))
    else:  # in order: the flattened outputs (a dict's sorted keys, as tf.nest flattens it)
        listed = keys == [f"output_{i}" for i in range(len(keys))]
        pairs = list(zip(file_outputs, keys if listed else sorted(keys)))
    scales = onnx_info.output_scales(content)
    outputs = [validate_lib.compare_output(labels[keys.index(key)], references[keys.index(key)], got[name],
                                           scales.get(name, 0.0), "ONNX file")
               for name, key in pairs]
    return validate_lib.summarize(
        outputs, data_lib.count(samples), "int8" if quantization_aware else None, quantization_aware,
        onnx_info.activation_quantizers(content), min_sqnr_db, min_top1_agreement, synthetic, file_format="ONNX")


def to_onnx(model, path=None, *, opset=None, validate=True, validation_data=None, max_samples=300,
            min_sqnr_db=None, min_top1_agreement=None, on_mismatch="raise", verbose=False):
    """Converts a Keras 3 model to ONNX and checks the file in onnxruntime against the model.

    The export is Keras's own `model.export(path, format="onnx")` (tf2onnx's
    `from_function`, which works on Keras 3 where `tf2onnx.convert.from_keras`
    fails), with the input signature taken from `model.inputs`, so a model
    that was never called exports too. A model trained under a mixed
    precision policy exports as a float32 copy with the same weights. A QAT
    model (from `kopt.quantization`) exports as a QDQ model: every activation
    range it learned becomes a QuantizeLinear/DequantizeLinear pair (uint8,
    the scale and zero point of its range), its weights are 8-bit initializers
    (uint8 around zero point 128, the U8U8 form onnxruntime computes exactly on
    x86 with or without VNNI and on ARM) read through a DequantizeLinear with
    the QAT model's own scales (per output channel for convolutions; see
    `kopt.convert.onnx_weights`), and onnxruntime runs the quantized ops in
    integer kernels (QLinearConv, QGemm ...).

    With `validate`, the file runs in onnxruntime (CPU, default graph
    optimizations) on held samples and every output is compared with the
    Keras output (SQNR, max abs error, and top-1 agreement on samples whose
    reference top-1 is decisive, see `kopt.convert.validate`); if any output
    misses a threshold, this raises and writes nothing (with
    `on_mismatch="warn"` it warns and writes the file anyway). Files are
    written atomically.

    Default thresholds (measured, Keras vs onnxruntime): a float model's file
    computes the same function up to float rounding: SQNR >= 50 dB and 99.9%
    decisive top-1. Measured 102-140 dB for the digits CNN and the smallest
    member of all 15 keras.applications families (weights=None, briefly
    trained as in benchmarks/coverage.py), max abs error 6e-4 or less. A QAT
    model's file differs from the QAT model where onnxruntime's integer
    kernels round differently from the float simulation, which compounds with
    depth: the QAT int8 defaults of `to_tflite`, 35 dB less 0.35 dB per
    quantized activation (QuantizeLinear on an activation: `report.ops`), at
    least 12 dB, and 95% decisive top-1. Measured: the digits CNN (5
    quantized activations, threshold 33.25 dB) 51.4-53.8 dB, max abs error
    0.12-0.17 on logits up to 16; its file with one activation scale halved
    7.6-21.4 dB (rejected). The 15 families' QAT files: 16.2-40.5 dB, 95.7-100%
    decisive top-1, as close as their int8 .tflite files or closer, except
    EfficientNetV2B0 (11.0 dB; its .tflite file 9.5 dB, see
    benchmarks/RESULTS.md).

    Args:
        model: a built Keras 3 model (float or QAT) with known inputs (a
            `keras.Input`), one or more inputs and outputs.
        path: where to write the .onnx file (its folder must exist); None
            writes nothing.
        opset: the ONNX opset, from 11 to the newest tf2onnx converts to (18);
            None: tf2onnx's default (15). A QAT model's convolution weights
            get per-channel scales from opset 13 (DequantizeLinear's `axis`);
            at 11-12 they stay float and onnxruntime quantizes them per tensor
            (digits CNN: 41 dB instead of 51 dB against its QAT model).
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
            no training step has set; ops tf2onnx cannot convert (named, with
            their nodes); a file that does not match the model
            (`on_mismatch="raise"`).

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
    _require()
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
        report = validate_lib.check_against_model(
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
