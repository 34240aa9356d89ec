"""Format-neutral validation: comparing a converted file's outputs with the Keras model's, output by output.

The runtimes (LiteRT for .tflite, onnxruntime for ONNX) run the file; this module compares and decides.

Every output of the file is matched to the Keras output of the same name (the
SavedModel signature keys `model.export` writes: the dict keys of a dict-output
model, else `output_0`, `output_1` ... in `model.outputs` order) and compared:

- SQNR, `10 log10(sum(ref^2) / sum((ref - tflite)^2))` in dB over all samples;
- for classifier outputs (shape `(n, classes)`, classes > 1), top-1 agreement
  counted only on *decisive* samples: those whose reference top-1 value
  exceeds the runner-up by more than `TIE_STEPS` (2) quantization steps of the
  output. The step is the larger of the output's quantization scale in the
  file (for a float output after a final DEQUANTIZE, the scale it
  dequantizes from; e.g. 1/256 for an int8 softmax) and
  `(max(ref) - min(ref)) / 255` over the validated samples (the step an int8
  tensor covering the output's range has; this alone for float files).
  Rounding the output moves the difference of two values by up to one step,
  so on a near-tied sample the top two may legitimately swap: those samples
  are excluded and counted (`tied_samples`). A broken file with an inflated
  output scale would exclude more samples, but its rounding then shows in
  SQNR.

The worst output decides: the file passes when every output reaches both
thresholds.
"""

import dataclasses
import logging
import warnings

import numpy as np

from kopt.convert import samples as data_lib
from kopt.convert._qat_state import input_ranges, is_quantization_aware
from kopt.errors import ValidationError

# Default acceptance thresholds, (minimum SQNR in dB, minimum decisive top-1 agreement).
# Post-training files (a float model converted; its int8 ranges come from calibration) and float files, per mode:
THRESHOLDS = {
    None: (50.0, 0.999),
    "float16": (35.0, 0.99),
    "dynamic": (20.0, 0.97),
    "int16x8": (20.0, 0.97),
    "int8": (12.0, 0.95),
}
# Quantization-aware int8 files. Their ranges are the QAT model's own, so a file differs from its QAT model
# only where integer kernels round differently from the float simulation, which compounds with depth: the
# default SQNR is a base less a step per op of the file (`count_ops`), never below the post-training figure.
# How these figures were measured, and what they reject: benchmarks/RESULTS.md, "Validation thresholds".
QAT_INT8_SQNR_DB = (35.0, 0.35, 12.0)  # (base, less per op, floor)
QAT_INT8_TOP1 = 0.95
TIE_STEPS = 2.0  # a sample is decisive when its reference top-2 margin exceeds 2 quantization steps of the output

QUANTIZATION_AWARE = "quantization-aware"
POST_TRAINING = "post-training"


def default_thresholds(mode, quantization_aware, ops=0):
    """The default `(min_sqnr_db, min_top1_agreement)` for a conversion mode and source.

    Post-training and float files: `THRESHOLDS[mode]`. Quantization-aware int8
    files: SQNR >= 35 dB less 0.35 dB per op of the file, at least 12 dB (the
    post-training default), and 95% decisive top-1 (see `QAT_INT8_SQNR_DB`).

    Args:
        mode: the `quantization` of `to_tflite` (None, "float16", "dynamic",
            "int16x8", "int8").
        quantization_aware: whether the model is a QAT model (its ranges come
            from training).
        ops: ops of the file with a quantized output, other than QUANTIZE /
            DEQUANTIZE (its depth, see `count_ops`).

    Returns:
        A tuple of the two thresholds.

    Example:

    ```python
    min_sqnr_db, min_top1 = kopt.convert.validation.default_thresholds("int8", quantization_aware=True, ops=6)
    ```
    """
    if quantization_aware and mode == "int8":
        base, per_op, floor = QAT_INT8_SQNR_DB
        return round(max(floor, base - per_op * ops), 2), QAT_INT8_TOP1
    return THRESHOLDS[mode]


@dataclasses.dataclass
class OutputReport:
    """How closely one output of a .tflite model reproduces the Keras output.

    Attributes:
        name: the output's name (the Keras output name, or the signature key).
        max_abs_error: largest absolute difference.
        sqnr_db: SQNR in dB (inf when identical).
        top1_agreement: fraction of decisive samples with the same arg-max, or
            None (not a classifier output, or no decisive sample).
        decisive_samples: samples counted for top-1 agreement.
        tied_samples: samples excluded as near-tied.
        tie_margin: the top-2 margin a sample needed to be decisive.
    """

    name: str
    max_abs_error: float
    sqnr_db: float
    top1_agreement: float = None
    decisive_samples: int = 0
    tied_samples: int = 0
    tie_margin: float = None

    def passes(self, min_sqnr_db, min_top1_agreement):
        ok = bool(self.sqnr_db >= min_sqnr_db)
        if self.top1_agreement is not None:
            ok = ok and self.top1_agreement >= min_top1_agreement
        return ok

    def __str__(self):
        if self.top1_agreement is None and self.tied_samples:
            top1 = f", top-1 n/a (all {self.tied_samples} samples near-tied)"
        elif self.top1_agreement is None:
            top1 = ""
        else:
            top1 = (f", top-1 agreement {self.top1_agreement:.2%} of {self.decisive_samples} decisive samples"
                    f" ({self.tied_samples} near-tied excluded)")
        return f"{self.name}: max |error| {self.max_abs_error:.4g}, SQNR {self.sqnr_db:.1f} dB{top1}"


@dataclasses.dataclass
class ValidationReport:
    """How closely a converted file (.tflite or ONNX) reproduces its Keras model on held samples.

    Attributes:
        samples: number of samples compared.
        max_abs_error: largest absolute difference over all outputs.
        sqnr_db: signal-to-quantization-noise ratio in dB of the worst output
            (`10 log10(sum(ref^2) / sum((ref - tflite)^2))`; inf when identical).
        top1_agreement: top-1 agreement on decisive samples of the worst
            classifier output, else None.
        min_sqnr_db, min_top1_agreement: the thresholds it was held to.
        mode: the conversion mode (`quantization`).
        source: "quantization-aware" (a QAT model: ranges from training) or
            "post-training" (a float model).
        defaults: the default `(min_sqnr_db, min_top1_agreement)` for `mode`
            and `source`; the caller may have given other thresholds.
        tied_samples: near-tied samples excluded from `top1_agreement`.
        outputs: an `OutputReport` per output.
        synthetic: whether the samples were synthetic (no data was given).
        ops: the file's depth in quantized ops (the QAT int8 default SQNR
            depends on it): for a .tflite file, its ops with a quantized
            output; for an ONNX file, its QuantizeLinear nodes on activations.
        file_format: "ONNX" for an ONNX file; None for a .tflite file.
    """

    samples: int
    max_abs_error: float
    sqnr_db: float
    top1_agreement: float
    min_sqnr_db: float
    min_top1_agreement: float
    mode: str = None
    source: str = POST_TRAINING
    defaults: tuple = None
    tied_samples: int = 0
    outputs: list = dataclasses.field(default_factory=list)
    synthetic: bool = False
    ops: int = None
    file_format: str = None

    @property
    def passed(self):
        if self.outputs:
            return all(o.passes(self.min_sqnr_db, self.min_top1_agreement) for o in self.outputs)
        return OutputReport("", self.max_abs_error, self.sqnr_db, self.top1_agreement).passes(
            self.min_sqnr_db, self.min_top1_agreement)

    @property
    def default_thresholds(self):
        """Whether both thresholds are the defaults for `mode` and `source`."""
        return self.defaults is None or (self.min_sqnr_db, self.min_top1_agreement) == tuple(self.defaults)

    @property
    def failed_outputs(self):
        """Names of the outputs below a threshold."""
        return [o.name for o in self.outputs if not o.passes(self.min_sqnr_db, self.min_top1_agreement)]

    def __str__(self):
        defaults = self.defaults or (self.min_sqnr_db, self.min_top1_agreement)
        sqnr_kind = "default" if self.min_sqnr_db == defaults[0] else "given"
        if sqnr_kind == "default" and self.source == QUANTIZATION_AWARE and self.mode == "int8":
            sqnr_kind = f"default for {self.ops} ops"
        top1_kind = "default" if self.min_top1_agreement == defaults[1] else "given"
        mode = "float32" if self.mode is None else self.mode
        if self.file_format:
            mode = f"{self.file_format} {mode}"
        head = (f"{mode} {self.source} file vs Keras on {self.samples}{' synthetic' if self.synthetic else ''} "
                f"samples, thresholds SQNR >= {self.min_sqnr_db:g} dB ({sqnr_kind}), decisive top-1 >= "
                f"{self.min_top1_agreement:.1%} ({top1_kind})")
        verdict = "PASS" if self.passed else "FAIL"
        if len(self.outputs) == 1:
            return f"{head}: {self.outputs[0]} -> {verdict}"
        if self.outputs:
            failing = "" if self.passed else f" (failing: {', '.join(self.failed_outputs)})"
            return "\n".join([f"{head}: {verdict}{failing}"] + [f"  {o}" for o in self.outputs])
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.2%}"
        return (f"{head}: max |error| {self.max_abs_error:.4g}, SQNR {self.sqnr_db:.1f} dB, top-1 agreement {top1} "
                f"-> {verdict}")


def sqnr_db(reference, test):
    """`10 log10(sum(reference^2) / sum((reference - test)^2))` in dB (inf when identical)."""
    reference = np.asarray(reference, "float64")
    noise = float(np.sum((reference - test) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0:
        return float("inf")
    if not np.isfinite(noise):
        return float("-inf")
    return float(10.0 * np.log10(max(signal, 1e-30) / noise))


def decisive_samples(reference, scale=0.0, steps=TIE_STEPS):
    """Which samples of a classifier output have a decisive reference top-1.

    Args:
        reference: reference output of shape `(n, classes)`.
        scale: the output's quantization scale in the file (0: none).
        steps: the top-2 margin needed, in steps; a step is the larger of
            `scale` and `(max(reference) - min(reference)) / 255`.

    Returns:
        `(mask, margin)`: a boolean array of shape `(n,)` and the margin used.
    """
    reference = np.asarray(reference, "float64")
    margin = steps * max(float(scale), float(np.max(reference) - np.min(reference)) / 255.0)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > margin, margin


def output_keys(outputs):
    """The SavedModel signature keys of a model's call result: dict keys, else `output_0`, `output_1` ..."""
    if isinstance(outputs, dict):
        return [str(k) for k in outputs], list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [f"output_{i}" for i in range(len(outputs))], list(outputs)
    return ["output_0"], [outputs]


def predict_outputs(model, samples, batch_size=64):
    """Every output of the Keras model on `samples`, in inference mode.

    Args:
        model: the Keras model.
        samples: a list of arrays, one per input in `model.inputs` order.
        batch_size: samples per call.

    Returns:
        `(keys, labels, arrays)`: the signature key, a readable name and the
        float32 output of each output.
    """
    import keras

    parts, keys = None, None
    for start in range(0, data_lib.count(samples), batch_size):
        y = model(data_lib.pack_for_call(model, data_lib.take(samples, start, start + batch_size)), training=False)
        keys, values = output_keys(y)
        if parts is None:
            parts = [[] for _ in values]
        for part, value in zip(parts, values):
            part.append(keras.ops.convert_to_numpy(value).astype("float32"))
    arrays = [np.concatenate(p) for p in parts]
    names = getattr(model, "output_names", None)
    if keys[0].startswith("output_") and names and len(names) == len(keys):
        labels = [str(n) for n in names]
    else:
        labels = list(keys)
    return keys, labels, arrays


def reference_outputs(model, x, quantization_aware=None):
    """What every format's `compare` starts from: the samples per input and the Keras model's outputs on them.

    Args:
        model: the Keras model a file was converted from.
        x: the samples: an array (single input), a list of arrays in `model.inputs` order, or a dict keyed by
            input name.
        quantization_aware: whether `model` is a QAT model; None: detect.

    Returns:
        `(inputs, samples, quantization_aware, keys, labels, references)`: `data.model_inputs(model)`, one array
        per input, the flag, and `predict_outputs`'s signature keys, names and arrays.
    """
    inputs = data_lib.model_inputs(model)
    samples = data_lib.as_input_list(x, inputs)
    if quantization_aware is None:
        quantization_aware = is_quantization_aware(model)
    return (inputs, samples, quantization_aware, *predict_outputs(model, samples))


def compare_output(label, reference, got, scale, file_kind=".tflite file"):
    """Compares one output of a converted file with the Keras output: an `OutputReport`.

    Args:
        label: the output's name.
        reference: the Keras model's output on the samples.
        got: the file's output on the same samples.
        scale: the output's quantization scale in the file (0: none), for the
            near-tie margin (see `decisive_samples`).
        file_kind: how error messages name the file.

    Returns:
        An `OutputReport`.
    """
    if reference.size != got.size:
        raise ValueError(f"Output '{label}': the {file_kind} gives shape {got.shape}, the Keras model "
                         f"{reference.shape}; they cannot be compared.")
    reference = reference.reshape(got.shape)
    report = OutputReport(label, float(np.max(np.abs(reference - got))), float(sqnr_db(reference, got)))
    if reference.ndim == 2 and reference.shape[-1] > 1:
        decisive, margin = decisive_samples(reference, scale)
        report.decisive_samples = int(decisive.sum())
        report.tied_samples = int(len(decisive) - decisive.sum())
        report.tie_margin = margin
        if decisive.any():
            report.top1_agreement = float(np.mean(
                reference[decisive].argmax(-1) == got[decisive].argmax(-1)))
    return report


def summarize(outputs, samples, mode, quantization_aware, ops, min_sqnr_db=None, min_top1_agreement=None,
              synthetic=False, file_format=None):
    """The `ValidationReport` of per-output comparisons: the worst output decides.

    Args:
        outputs: an `OutputReport` per output (from `compare_output`).
        samples: how many samples were compared.
        mode: the conversion mode, for the default thresholds (None: float).
        quantization_aware: whether the model is a QAT model.
        ops: the file's depth in quantized ops (the QAT int8 default SQNR
            depends on it).
        min_sqnr_db: SQNR threshold; None: the default for `mode` and source.
        min_top1_agreement: decisive top-1 threshold; None: the default.
        synthetic: record that the samples were synthetic.
        file_format: "ONNX" for an ONNX file; None for .tflite.

    Returns:
        A `ValidationReport`.
    """
    default_sqnr, default_top1 = default_thresholds(mode, quantization_aware, ops)
    with_top1 = [o for o in outputs if o.top1_agreement is not None]
    worst_top1 = min(with_top1, key=lambda o: o.top1_agreement) if with_top1 else None
    return ValidationReport(
        samples=samples,
        max_abs_error=max(o.max_abs_error for o in outputs),
        sqnr_db=min(o.sqnr_db for o in outputs),
        top1_agreement=worst_top1.top1_agreement if worst_top1 else None,
        min_sqnr_db=default_sqnr if min_sqnr_db is None else float(min_sqnr_db),
        min_top1_agreement=default_top1 if min_top1_agreement is None else float(min_top1_agreement),
        mode=mode,
        source=QUANTIZATION_AWARE if quantization_aware else POST_TRAINING,
        defaults=(default_sqnr, default_top1),
        tied_samples=worst_top1.tied_samples if worst_top1 else sum(o.tied_samples for o in outputs),
        outputs=outputs,
        synthetic=synthetic,
        ops=ops,
        file_format=file_format,
    )


SYNTHETIC_SAMPLES = 100  # validation samples made up when no data is given


def check_against_model(model, inputs, held, compare_file, kind, *, quantization_aware, max_samples, verbose,
                        on_mismatch):
    """Validates a converted file and acts on the result: the step `to_tflite` and `to_onnx` share.

    Args:
        model: the Keras model the file was converted from.
        inputs: its `data.model_inputs`.
        held: validation samples, or None to make up synthetic ones (with a warning).
        compare_file: `compare_file(samples, synthetic) -> ValidationReport`.
        kind: "TFLite" or "ONNX", for the messages.
        quantization_aware: whether `model` is a QAT model (synthetic inputs then stay in its input range).
        max_samples: most synthetic samples.
        verbose: print the report.
        on_mismatch: "raise" a `kopt.errors.ValidationError` or "warn" when the file does not match.

    Returns:
        The `ValidationReport`.
    """
    synthetic = held is None
    if synthetic:
        ranges = input_ranges(model) if quantization_aware else None
        held = data_lib.synthetic_inputs(inputs, min(max_samples, SYNTHETIC_SAMPLES), ranges)
        where = "within the QAT input range" if quantization_aware else "uniform in [0, 1)"
        warnings.warn(f"No validation_data: validated on {data_lib.count(held)} synthetic inputs {where}. "
                      "Pass validation_data to check the file on real inputs.", stacklevel=3)
    logging.getLogger("kopt").info("validating on %d samples against the Keras model", data_lib.count(held))
    report = compare_file(held, synthetic)
    if verbose:
        print(report)
    if not report.passed:
        message = f"The {kind} model does not match the Keras model: {report}"
        if on_mismatch == "raise":
            raise ValidationError(message + "\nNothing was written. Pass on_mismatch='warn' to keep it anyway.",
                                  report=report)
        warnings.warn(message, stacklevel=3)
    return report
