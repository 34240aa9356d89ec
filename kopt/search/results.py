"""`TrialResult`: what one trial of a `CompressionTuner` measured, and a table of them."""

import dataclasses

from kopt.search.compression import label as compression_label

METRICS = ("accuracy", "size", "size_gzip", "latency")


@dataclasses.dataclass
class TrialResult:
    """One trial of a `CompressionTuner`: its hyperparameters and what its .tflite file measured.

    Args:
        trial_id: keras-tuner's id of the trial.
        status: "COMPLETED", "FAILED" (or keras-tuner's "RUNNING" / "INVALID"
            for a trial that was interrupted or is being retried).
        error: for a failed trial, its exception as "Type: message"; else None.
        hyperparameters: every hyperparameter value of the trial, the
            compression ones named "compression/<key>".
        metrics: measured on the file: "accuracy" (top-1 on the validation
            data, run in LiteRT), "size" (bytes), "size_gzip" (bytes gzipped)
            and "latency" (median ms of one inference, 1 thread). Empty for a
            failed trial.
        path: the .tflite file in the trial's folder, or None.
        compression: the trial's compression as plain values ("sparsity",
            "quantization", "qat", "distillation", ...).
        seconds: wall time of the trial.

    Example:

    ```python
    result = kopt.search.TrialResult("00", "COMPLETED", None, {}, {"accuracy": 0.97, "size": 9000},
                                     "model.tflite", {"sparsity": 0.5, "quantization": "int8", "qat": True}, 12.0)
    print(result.label)  # 50% sparse, int8 QAT
    ```
    """

    trial_id: str
    status: str
    error: str | None
    hyperparameters: dict
    metrics: dict
    path: str | None
    compression: dict
    seconds: float | None = None

    @property
    def completed(self):
        return self.status == "COMPLETED"

    @property
    def label(self):
        """The compression in words, e.g. "50% sparse, int8 QAT"."""
        return compression_label(self.compression) if self.compression else "?"


def format_line(result, number=None, total=None):
    """One progress line: the trial, its compression and what its file measured (or its error)."""
    head = f"Trial {number}/{total}" if number is not None else f"Trial {result.trial_id}"
    if not result.completed:
        return f"{head} FAILED ({result.label}): {result.error}"
    m = result.metrics
    seconds = f", {result.seconds:.1f} s" if result.seconds is not None else ""
    return (f"{head} {result.label}: accuracy {m['accuracy']:.4f}, {m['size']:,} B "
            f"({m['size_gzip']:,} B gzipped), {m['latency']:.3f} ms{seconds}")


def format_table(results, front_ids=()):
    """Every trial as a table; trials on the Pareto front are marked with *."""
    rows = [f"{'':2}{'trial':>6}  {'compression':<34}{'accuracy':>9}{'bytes':>11}{'gzipped':>10}{'ms':>9}{'s':>7}"]
    for r in results:
        mark = "* " if r.trial_id in front_ids else "  "
        seconds = f"{r.seconds:>7.1f}" if r.seconds is not None else f"{'':>7}"
        if r.completed:
            m = r.metrics
            rows.append(f"{mark}{r.trial_id:>6}  {r.label:<34}{m['accuracy']:>9.4f}{m['size']:>11,}"
                        f"{m['size_gzip']:>10,}{m['latency']:>9.3f}{seconds}")
        else:
            error = (r.error or "")[:60]
            rows.append(f"{mark}{r.trial_id:>6}  {r.label:<34}{r.status:>9}  {error}")
    return "\n".join(rows)
