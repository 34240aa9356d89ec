"""`SensitivityReport`: what `kopt.analysis.sensitivity` measured, layer by layer."""

import dataclasses
import math

from kopt._keras.figures import new_figure, save_figure


def _plain(value):
    """A JSON-safe value: non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _db(value):
    return "-" if value is None else ("inf" if value == math.inf else f"{value:.1f}")


def _number(value):
    return "-" if value is None else f"{value:.4g}"


@dataclasses.dataclass
class SensitivityRow:
    """One quantizable layer of a `SensitivityReport`.

    Attributes:
        layer: the Keras layer's name (for a plain operation's range, the operation's name).
        layer_class: the layer's class name (`"operation"` for a plain operation).
        sqnr_only_db: SQNR (dB) of the model's outputs against the float model's with only this layer quantized.
        sqnr_all_but_db: the same with every layer quantized but this one.
        output_min: the smallest value of the layer's output on the data (float model).
        output_max: the largest.
        range_min: the lower end of the range its output is quantized with (calibrated, or learned by QAT); None
            when the layer has none of its own (a Conv2D whose ReLU TFLite fuses: the ReLU's row has it).
        range_max: the upper end.
        rmse_over_scale: TFLite's QuantizationDebugger figure for the int8 file: the RMS error of the op's output
            in units of its quantization step (about 0.29 for ideal rounding), the largest over the ops named after
            the layer; None where the debugger gives none.
        ops: the TFLite ops the debugger figures come from.

    Example:

    ```python
    row = kopt.analysis.SensitivityRow("dense", "Dense", sqnr_only_db=31.5, sqnr_all_but_db=44.0)
    assert row.to_dict()["layer"] == "dense"
    ```
    """

    layer: str
    layer_class: str
    sqnr_only_db: float
    sqnr_all_but_db: float
    output_min: float = None
    output_max: float = None
    range_min: float = None
    range_max: float = None
    rmse_over_scale: float = None
    ops: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return {k: _plain(v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass
class SensitivityReport:
    """What `kopt.analysis.sensitivity` returns.

    Attributes:
        rows: `SensitivityRow`s, the most sensitive layer first (lowest `sqnr_only_db`, then highest
            `sqnr_all_but_db`).
        sqnr_all_db: SQNR (dB) of the outputs with every layer quantized.
        mode: the quantization mode measured ("int8").
        source: "post-training" (a float model, ranges calibrated on the data) or "quantization-aware" (a QAT
            model, its learned ranges).
        samples: how many samples were used.
        seconds: how long the analysis took.

    Example:

    ```python
    report = kopt.analysis.sensitivity(model, x, debugger=False)
    print(report)                      # a table, the most sensitive layer first
    report.rows[0].layer, report.rows[0].sqnr_only_db
    json_ready = report.to_dict()
    report.plot("sensitivity.png")     # a horizontal bar chart
    ```
    """

    rows: list
    sqnr_all_db: float
    mode: str = "int8"
    source: str = "post-training"
    samples: int = 0
    seconds: float = 0.0

    def __str__(self):
        width = max([len("layer")] + [len(r.layer) for r in self.rows])
        kind = max([len("class")] + [len(r.layer_class) for r in self.rows])
        lines = [f"{self.mode} sensitivity ({self.source}, {self.samples} samples, {self.seconds:.1f} s): "
                 f"all layers quantized {_db(self.sqnr_all_db)} dB",
                 f"{'layer':<{width}}  {'class':<{kind}}  {'only (dB)':>9}  {'all but (dB)':>12}  "
                 f"{'output range':>21}  {'quantized range':>21}  {'rmse/scale':>10}"]
        for r in self.rows:
            out = "-" if r.output_min is None else f"[{_number(r.output_min)}, {_number(r.output_max)}]"
            kept = "-" if r.range_min is None else f"[{_number(r.range_min)}, {_number(r.range_max)}]"
            rmse = "-" if r.rmse_over_scale is None else f"{r.rmse_over_scale:.3f}"
            lines.append(f"{r.layer:<{width}}  {r.layer_class:<{kind}}  {_db(r.sqnr_only_db):>9}  "
                         f"{_db(r.sqnr_all_but_db):>12}  {out:>21}  {kept:>21}  {rmse:>10}")
        return "\n".join(lines)

    def keep_float_candidates(self, costs=None):
        """The layers worth keeping float, best first: by how much the output SQNR rises when only that layer is
        left float (`sqnr_all_but_db - sqnr_all_db`), divided by its cost when `costs` is given. Layers whose
        float copy does not help, and the ranges of plain operations (not layers), are left out.

        Args:
            costs: optional `{layer name: cost}` (e.g. weights, for size); missing names cost 1.

        Returns:
            A list of layer names, for `to_tflite(keep_float=...)` or `quantize_model(float_layers=...)`.

        Example:

        ```python
        report = kopt.analysis.sensitivity(model, x, debugger=False)
        worst_two = report.keep_float_candidates()[:2]
        ```
        """
        costs = costs or {}
        gain = {r.layer: r.sqnr_all_but_db - self.sqnr_all_db for r in self.rows
                if r.layer_class != "operation" and math.isfinite(self.sqnr_all_db)}
        return [name for name in sorted(gain, key=lambda n: (-gain[n] / max(costs.get(n, 1), 1e-12), n))
                if gain[name] > 0]

    def to_dict(self):
        """The report as plain Python values for `json.dump` (infinite SQNRs, i.e. no error at all, become None)."""
        return {"mode": self.mode, "source": self.source, "samples": self.samples, "seconds": self.seconds,
                "sqnr_all_db": _plain(self.sqnr_all_db), "rows": [r.to_dict() for r in self.rows]}

    def plot(self, path, top=None):
        """Writes a horizontal bar chart of each layer's SQNR (only it quantized; every layer but it), most
        sensitive at the top.

        Args:
            path: the image file; its extension picks the format (.png, .svg, .pdf). Written atomically.
            top: draw only the `top` most sensitive layers (None: all).

        Returns:
            `path`.
        """
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
            raise ValueError(f"`top` must be a positive integer or None, got {top!r}.")
        rows = self.rows[:top] if top else self.rows
        finite = [v for r in rows for v in (r.sqnr_only_db, r.sqnr_all_but_db) if v is not None and math.isfinite(v)]
        ceiling = (max(finite) if finite else 100.0) + 10.0  # where "no error at all" (inf) is drawn

        def shown(v):
            return ceiling if v is None or not math.isfinite(v) else v

        figure, extension = new_figure(path, (8, 1.5 + 0.28 * max(len(rows), 1)), "SensitivityReport.plot")
        ax = figure.subplots()
        positions = list(range(len(rows)))[::-1]  # the most sensitive at the top
        ax.barh([p + 0.2 for p in positions], [shown(r.sqnr_only_db) for r in rows], height=0.4, color="C3",
                label="only this layer quantized")
        ax.barh([p - 0.2 for p in positions], [shown(r.sqnr_all_but_db) for r in rows], height=0.4, color="C0",
                label="every layer but this one quantized")
        if self.sqnr_all_db is not None and math.isfinite(self.sqnr_all_db):
            ax.axvline(self.sqnr_all_db, color="0.3", ls="--", lw=1, label="every layer quantized")
        ax.set_yticks(positions, [f"{r.layer} ({r.layer_class})" for r in rows], fontsize=7)
        ax.set_xlabel("output SQNR against the float model (dB; lower = more sensitive)")
        ax.set_title(f"{self.mode} sensitivity per layer ({self.source}, {self.samples} samples)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        return save_figure(figure, path, extension)
