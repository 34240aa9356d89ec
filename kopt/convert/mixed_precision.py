"""What a mixed-precision .tflite file keeps out of int8, and what that costs in size and latency."""

import dataclasses

from kopt.convert import _litert as litert

# Ops that only move between int8 and float at the edges of a float island.
_BOUNDARY = ("QUANTIZE", "DEQUANTIZE")


@dataclasses.dataclass
class MixedPrecisionReport:
    """The ops of a .tflite file that are not int8 (float, or int16 activations), and their cost against the all-int8
    file.

    Attributes:
        kept_float: the Keras layers asked to stay float.
        ops: every op of the file that computes in float or int16: dicts with `op`, `dtype` (of its output),
            `tensor` (its output's name) and `layers` (the Keras layers it belongs to).
        boundary_ops: the QUANTIZE / DEQUANTIZE ops at the edges of those islands.
        size_bytes: the file's size.
        int8_size_bytes: the all-int8 file's size (same calibration); None when there is none to compare (a QAT
            model whose kept layers QAT never quantized).
        latency_ms: median latency of one inference (1 thread, LiteRT's CPU kernels), measured interleaved with
            the all-int8 file's (`int8_latency_ms`) so both see the same machine load; None when not measured.
        int8_latency_ms: as `latency_ms`, for the all-int8 file.
        int16: the Keras layers asked to run with int16 activations.

    Example:

    ```python
    tflite = kopt.convert.to_tflite(model, representative_data=np.random.rand(64, 8).astype("float32"),
                                    keep_float=[model.layers[0].name], on_mismatch="warn")
    report = tflite.mixed_precision
    float_ops = [op["op"] for op in report.ops if op["dtype"] == "float32"]
    extra_bytes = report.size_bytes - report.int8_size_bytes
    ```
    """

    kept_float: list
    ops: list
    boundary_ops: int
    size_bytes: int
    int8_size_bytes: int = None
    latency_ms: float = None
    int8_latency_ms: float = None
    int16: list = dataclasses.field(default_factory=list)

    @property
    def size_cost(self):
        """The file's size over the all-int8 file's (1.0: no cost), or None."""
        return self.size_bytes / self.int8_size_bytes if self.int8_size_bytes else None

    @property
    def latency_cost(self):
        """The file's latency over the all-int8 file's, measured in one run, or None."""
        if self.latency_ms is None or not self.int8_latency_ms:
            return None
        return self.latency_ms / self.int8_latency_ms

    def to_dict(self):
        """The report as plain values (for `json.dumps`)."""
        return dict(dataclasses.asdict(self), size_cost=self.size_cost, latency_cost=self.latency_cost)

    def __str__(self):
        wide = f", {len(self.int16)} with int16 activations" if self.int16 else ""
        lines = [f"Mixed precision: {len(self.kept_float)} layer(s) kept float{wide}, {len(self.ops)} op(s) not "
                 f"int8 (+{self.boundary_ops} QUANTIZE/DEQUANTIZE)"]
        for op in self.ops:
            layers = ", ".join(op["layers"]) or "-"
            lines.append(f"  {op['op']:<18} {op['dtype']:<8} layer {layers}")
        size = f"  size {self.size_bytes:,} B"
        if self.int8_size_bytes:
            size += f" (all int8: {self.int8_size_bytes:,} B, x{self.size_cost:.2f})"
        lines.append(size)
        if self.latency_ms is not None:
            latency = f"  latency {self.latency_ms:.3f} ms"
            if self.int8_latency_ms:
                latency += f" (all int8: {self.int8_latency_ms:.3f} ms, x{self.latency_cost:.2f})"
            lines.append(latency + ", 1 thread, median")
        return "\n".join(lines)


def non_int8_ops(content, layers_of, rename):
    """The ops of `content` that compute in float or int16, and the number of QUANTIZE/DEQUANTIZE ops between
    them and int8 ops.

    Args:
        content: the .tflite bytes.
        layers_of: a function from a tensor name to the Keras layer names it carries.
        rename: a function from a tensor name of `content` to the name to report.
    """
    info = litert.inspect_tflite(content)
    ops, boundary = [], 0
    graph_io = {t["index"] for t in info.inputs + info.outputs}
    for op in info.ops:
        activations = [t for t in op["inputs"] + op["outputs"] if not t["constant"]]
        if op["op"] in _BOUNDARY:
            boundary += any(t["index"] not in graph_io for t in op["inputs"] + op["outputs"])
            continue
        kinds = {t["dtype"] for t in activations}
        if kinds & {"float32", "float16", "int16"}:
            out = op["outputs"][0] if op["outputs"] else {"name": "", "dtype": ""}
            ops.append({"op": op["op"], "dtype": out["dtype"], "tensor": rename(out["name"]),
                        "layers": layers_of(out["name"])})
    return ops, boundary


def interleaved_latency(files, input_shapes=None, rounds=3, runs=15):
    """Median latency (ms) of each file in `files`, measured in alternation (`rounds` x `runs` invocations each)
    so that load on a shared machine hits them alike; None for all when the files cannot be timed."""
    import statistics

    medians = [[] for _ in files]
    try:
        for _ in range(rounds):
            for i, content in enumerate(files):
                medians[i].append(litert.benchmark(content, runs=runs, warmup=3, input_shapes=input_shapes).median_ms)
    except (ValueError, RuntimeError):  # inputs whose shape the file leaves open and no samples to fix it
        return [None for _ in files]
    return [statistics.median(m) for m in medians]
