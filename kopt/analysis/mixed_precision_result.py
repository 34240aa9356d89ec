"""`MixedPrecisionResult`: the file `auto_mixed_precision` chose, and the steps it measured on the way."""

import dataclasses
import math

from kopt._keras.figures import new_figure, save_figure


@dataclasses.dataclass
class MixedPrecisionStep:
    """One file `auto_mixed_precision` converted and measured.

    Attributes:
        kept_float: the layers kept float in this file.
        added: the lowest-ranked layer of `kept_float` (None for the all-int8 file).
        met: whether this file meets the target.
        sqnr_db: the file's output SQNR against the float Keras model (worst output), on the evaluation samples.
        accuracy: the file's top-1 accuracy against the labels (None without labels).
        size_bytes: the file's size.
        latency_ms: median latency of one inference (1 thread), all steps timed in alternation in one run.
    """

    kept_float: list
    added: str
    met: bool
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

    @property
    def chosen(self):
        """The `MixedPrecisionStep` of the chosen file."""
        return next(s for s in self.steps if sorted(s.kept_float) == sorted(self.kept_float))

    def __str__(self):
        head = (f"Mixed precision ({'met' if self.met else 'NOT met'}: {self.target}; budget {self.budget}): "
                f"{len(self.kept_float)} layer(s) kept float: {', '.join(self.kept_float) or '-'}")
        lines = [head]
        if self.float_accuracy is not None:
            lines.append(f"  float model accuracy {self.float_accuracy:.4f}")
        lines.append(f"  {'file':<4} {'float':>5} {'last layer added':<32} {'met':<4} {'SQNR dB':>8} {'accuracy':>9} "
                     f"{'size B':>10} {'latency ms':>11}")
        for i, step in enumerate(self.steps):
            accuracy = "-" if step.accuracy is None else f"{step.accuracy:.4f}"
            latency = "-" if step.latency_ms is None else f"{step.latency_ms:.3f}"
            lines.append(f"  {i:<4} {len(step.kept_float):>5} {(step.added or '(all int8)')[:32]:<32} "
                         f"{'yes' if step.met else 'no':<4} {step.sqnr_db:>8.1f} {accuracy:>9} {step.size_bytes:>10,} "
                         f"{latency:>11}")
        return "\n".join(lines)

    def to_dict(self):
        """The result as plain values (for `json.dumps`), without the file's bytes."""
        return {"kept_float": list(self.kept_float), "target": self.target, "met": self.met,
                "budget": self.budget, "float_accuracy": self.float_accuracy,
                "path": getattr(self.file, "path", None),
                "steps": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in dataclasses.asdict(s).items()} for s in self.steps]}

    def plot(self, path):
        """Writes the files measured as a chart: the metric (accuracy with labels, else SQNR) against the cost the
        search kept low (size, or latency when measured), labelled with their number of float layers, the chosen
        file marked.

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
        order = sorted(range(len(self.steps)), key=lambda i: len(self.steps[i].kept_float))
        ax.plot([cost[i] for i in order], [metric[i] for i in order], "-", color="0.7", lw=1)
        for met, color, text in ((True, "C0", "meets the target"), (False, "C3", "does not")):
            chosen = [i for i in order if self.steps[i].met == met]
            if chosen:
                ax.plot([cost[i] for i in chosen], [metric[i] for i in chosen], "o", color=color, label=text)
        for i in order:
            ax.annotate(str(len(self.steps[i].kept_float)), (cost[i], metric[i]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        picked = self.steps.index(self.chosen)
        ax.plot([cost[picked]], [metric[picked]], "*", color="k", markersize=12, label="chosen file")
        if labels:
            ax.axhline(self.float_accuracy, color="0.3", ls="--", lw=1, label="float model")
        ax.set_xlabel("latency (ms, 1 thread)" if by_latency else "file size (KiB)")
        ax.set_ylabel("top-1 accuracy" if labels else "output SQNR vs float model (dB)")
        ax.set_title(f"Mixed precision steps ({self.target}; {'met' if self.met else 'not met'})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        return save_figure(figure, path, extension)
