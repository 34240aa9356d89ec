"""Comparing a .tflite model with the Keras model it came from."""

import dataclasses

import numpy as np

from kopt.convert.inspect import run

# Default acceptance thresholds per conversion mode: (minimum SQNR in dB, minimum top-1 agreement).
THRESHOLDS = {
    None: (50.0, 0.999),
    "float16": (35.0, 0.99),
    "dynamic": (20.0, 0.97),
    "int16x8": (20.0, 0.97),
    "int8": (12.0, 0.95),
}


@dataclasses.dataclass
class ValidationReport:
    """How closely a .tflite model reproduces its Keras model on held samples.

    Attributes:
        samples: number of samples compared.
        max_abs_error: largest absolute difference of the output.
        sqnr_db: signal-to-quantization-noise ratio of the output, in dB
            (`10 log10(sum(ref^2) / sum((ref - tflite)^2))`; inf when identical).
        top1_agreement: fraction of samples with the same arg-max (classifiers), else None.
        min_sqnr_db, min_top1_agreement: the thresholds it was held to.
    """

    samples: int
    max_abs_error: float
    sqnr_db: float
    top1_agreement: float
    min_sqnr_db: float
    min_top1_agreement: float

    @property
    def passed(self):
        ok = self.sqnr_db >= self.min_sqnr_db
        if self.top1_agreement is not None:
            ok = ok and self.top1_agreement >= self.min_top1_agreement
        return ok

    def __str__(self):
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.2%} (min {self.min_top1_agreement:.0%})"
        return (f"TFLite vs Keras on {self.samples} samples: max |error| {self.max_abs_error:.4g}, "
                f"SQNR {self.sqnr_db:.1f} dB (min {self.min_sqnr_db:.0f}), top-1 agreement {top1} "
                f"-> {'PASS' if self.passed else 'FAIL'}")


def sqnr_db(reference, test):
    noise = float(np.sum((reference.astype("float64") - test) ** 2))
    signal = float(np.sum(reference.astype("float64") ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def predict(model, x, batch_size=64):
    """The Keras model's (first) output on `x`, in inference mode, without `predict`'s retracing."""
    import keras

    outputs = []
    for start in range(0, len(x), batch_size):
        y = model(x[start:start + batch_size], training=False)
        y = y[0] if isinstance(y, (list, tuple)) else y
        outputs.append(keras.ops.convert_to_numpy(y).astype("float32"))
    return np.concatenate(outputs)


def compare(model, tflite, x, mode, min_sqnr_db=None, min_top1_agreement=None):
    """Runs `model` and the .tflite model on `x` and returns a `ValidationReport`."""
    default_sqnr, default_top1 = THRESHOLDS[mode]
    reference = predict(model, x)
    got = run(tflite, x)
    reference = reference.reshape(got.shape)
    top1 = None
    if reference.ndim == 2 and reference.shape[-1] > 1:
        top1 = float(np.mean(reference.argmax(-1) == got.argmax(-1)))
    return ValidationReport(
        samples=len(x), max_abs_error=float(np.max(np.abs(reference - got))), sqnr_db=sqnr_db(reference, got),
        top1_agreement=top1,
        min_sqnr_db=default_sqnr if min_sqnr_db is None else float(min_sqnr_db),
        min_top1_agreement=default_top1 if min_top1_agreement is None else float(min_top1_agreement),
    )
