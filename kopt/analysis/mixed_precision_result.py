"""`MixedPrecisionResult`: the file `auto_mixed_precision` chose, and the steps it measured on the way."""

import dataclasses
import math

from kopt._keras.figures import new_figure, save_figure


@dataclasses.dataclass
class MixedPrecisionStep:
    """One file `auto_mixed_precision` converted and measured.

    Attributes:
        kept_float: the layers kept float in this file.
        added: the layer this step tried to keep float (None for the all-int8 start).
        accepted: whether the layer stayed kept (it raised the metric); a rejected step's layer is int8 again.
        sqnr_db: the file's output SQNR against the float Keras model (worst output), on the evaluation samples.
        accuracy: the file's top-1 accuracy against the labels (None without labels).
        size_bytes: the file's size.
        latency_ms: median latency of one inference (1 thread), all steps timed in alternation in one run.
    """

    kept_float: list
    added: str
    accepted: bool
    sqnr_db: float
    accuracy: float
    size_bytes: int
    latency_ms: float = None


@dataclasses.dataclass
class MixedPrecisionResult:
    """What `kopt.analysis.auto_mixed_precision` returns.

    Attributes:
        file: the chosen file (`kopt.convert.TFLiteModel`, validated against the float model: `.report`,
            `.mixed_precision`, `.path`).
        kept_float: the layer names kept float in it.
        steps: every `MixedPrecisionStep` measured, in order (the first is all int8).
        target: the target, e.g. `"sqnr_db >= 30"` or `"accuracy drop <= 0.01"`.
        met: whether `file` meets it.
        float_accuracy: the float Keras model's accuracy on the evaluation samples (None without labels).
        budget: "size" or "latency", the cost the search kept low.
    """

    file: object
    kept_float: list
    steps: list
    target: str
    met: bool
    float_accuracy: float = None
    budget: str = "size"

    def __str__(self):
        head = (f"Mixed precision ({'met' if self.met else 'NOT met'}: {self.target}; budget {self.budget}): "
                f"{len(self.kept_float)} layer(s) kept float: {', '.join(self.kept_float) or '-'}")
        lines = [head]
        if self.float_accuracy is not None:
            lines.append(f"  float model accuracy {self.float_accuracy:.4f}")
        lines.append(f"  {'step':<4} {'layer tried':<32} {'kept':<5} {'SQNR dB':>8} {'accuracy':>9} {'size B':>10} "
                     f"{'latency ms':>11}")
        for i, step in enumerate(self.steps):
            accuracy = "-" if step.accuracy is None else f"{step.accuracy:.4f}"
            latency = "-" if step.latency_ms is None else f"{step.latency_ms:.3f}"
            lines.append(f"  {i:<4} {(step.added or '(all int8)')[:32]:<32} {'yes' if step.accepted else 'no':<5} "
                         f"{step.sqnr_db:>8.1f} {accuracy:>9} {step.size_bytes:>10,} {latency:>11}")
        return "\n".join(lines)

    def to_dict(self):
        """The result as plain values (for `json.dumps`), without the file's bytes."""
        return {"kept_float": list(self.kept_float), "target": self.target, "met": self.met,
                "budget": self.budget, "float_accuracy": self.float_accuracy,
                "path": getattr(self.file, "path", None),
                "steps": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in dataclasses.asdict(s).items()} for s in self.steps]}

    def plot(self, path):
        """Writes the steps as a chart: the metric (accuracy with labels, else SQNR) against the cost the search
        kept low (size, or latency when measured), the accepted steps joined, the chosen file marked.

        Args:
            path: the image file; its extension picks the format (.png, .svg, .pdf). Written atomically.

        Returns:
            `path`.
        """
        figure, extension = new_figure(path, (7, 4.5), "MixedPrecisionResult.plot")
        ax = figure.subplots()
        by_latency = self.budget == "latency" and all(s.latency_ms is not None for s in self.steps)
        cost = [s.latency_ms if by_latency else s.size_bytes / 1024 for s in self.steps]
        labels = self.float_accuracy is not None
        metric = [s.accuracy if labels else s.sqnr_db for s in self.steps]
        accepted = [i for i, s in enumerate(self.steps) if s.accepted]
        ax.plot([cost[i] for i in accepted], [metric[i] for i in accepted], "-o", color="C0",
                label="layers kept float (accepted)")
        rejected = [i for i, s in enumerate(self.steps) if not s.accepted]
        if rejected:
            ax.plot([cost[i] for i in rejected], [metric[i] for i in rejected], "x", color="C3",
                    label="tried, no gain (int8 again)")
        for i in accepted:
            ax.annotate(str(len(self.steps[i].kept_float)), (cost[i], metric[i]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        if labels:
            ax.axhline(self.float_accuracy, color="0.3", ls="--", lw=1, label="float model")
        ax.set_xlabel("latency (ms, 1 thread)" if by_latency else "file size (KiB)")
        ax.set_ylabel("top-1 accuracy" if labels else "output SQNR vs float model (dB)")
        ax.set_title(f"Mixed precision steps ({self.target}; {'met' if self.met else 'not met'})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        return save_figure(figure, path, extension)
