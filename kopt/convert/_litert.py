"""The LiteRT runtime: reading, running, inspecting and timing .tflite files (`ai_edge_litert`'s interpreter).

Every use of the interpreter's private API is in this module (`_ops`)."""

import collections
import dataclasses
import gzip
import statistics
import time

import numpy as np

from kopt.convert.samples import run_in_batches
from kopt.convert._files import read_bytes, to_plain

# Ops whose weight is one input (its index): the weights `zero_weight_fraction` counts.
_TFLITE_WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1, "CONV_3D": 1}
_FLOAT = ("float32", "float16", "float64")


def read_model(tflite):
    """The bytes of a .tflite model given as bytes or a path."""
    return read_bytes(tflite, ".tflite", "a .tflite model")


def interpreter(tflite, threads=1, delegates=True):
    """An allocated `ai_edge_litert` Interpreter (without the default XNNPACK delegate if `delegates=False`)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {} if delegates else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_content=read_model(tflite), num_threads=threads, **kwargs)
    it.allocate_tensors()
    return it


def _ops(it):
    """The interpreter's ops: `{"op_name", "inputs", "outputs", ...}` each, in execution order.

    `Interpreter._get_ops_details` is private, but it is the only way LiteRT's Python API lists the ops of a
    file (the public `get_tensor_details` lists tensors only); this is its one use in kopt.
    """
    return it._get_ops_details()


def op_outputs(tflite):
    """`[(op name, [output tensor names])]` of a .tflite file, in execution order (without allocating it: a
    calibrated float model whose shapes are open lists its ops too)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=read_model(tflite))
    details = it.get_tensor_details()
    return [(op["op_name"], [details[i]["name"] for i in op["outputs"]]) for op in _ops(it)]


@dataclasses.dataclass
class TFLiteInfo:
    """What `kopt.convert.inspect` finds in a .tflite file."""

    size_bytes: int
    gzip_bytes: int
    ops: list  # [{"op": name, "inputs": [tensor dicts], "outputs": [tensor dicts]}]
    op_counts: dict
    inputs: list
    outputs: list
    tensors: list  # [{"name", "dtype", "shape", "scales", "zero_points", "constant"}]
    zero_weight_fraction: float  # zeros among the weights of CONV/DEPTHWISE/FULLY_CONNECTED/TRANSPOSE_CONV ops
    float_ops: list  # ops that compute on float tensors: [(op name, output tensor name)]
    # Each weight of those ops: {"name", "op", "shape", "dtype", "unique_values", "unique_per_channel" (the most
    # distinct values in one output channel, for per-channel quantized weights, else None), "zeros"}.
    weights: list = dataclasses.field(default_factory=list)

    @property
    def is_full_integer(self):
        return not self.float_ops

    def to_dict(self):
        """The information as plain dicts, lists, strings and numbers (for `json.dumps`)."""
        return {"format": "tflite", **to_plain(dataclasses.asdict(self)), "is_full_integer": self.is_full_integer}

    def __str__(self):
        lines = [f"TFLite model: {self.size_bytes:,} bytes ({self.gzip_bytes:,} gzipped), "
                 f"{sum(self.op_counts.values())} ops, {self.zero_weight_fraction:.1%} zero weights"]
        lines += [f"  {name:24s} x{count}" for name, count in sorted(self.op_counts.items())]
        for label, tensors in (("input", self.inputs), ("output", self.outputs)):
            for t in tensors:
                q = f" scale={t['scales'][0]:.6g} zero_point={t['zero_points'][0]}" if t["scales"] else ""
                lines.append(f"  {label} {t['name']}: {t['dtype']} {t['shape']}{q}")
        if self.weights:
            unique = [w["unique_values"] for w in self.weights]
            lines.append(f"  {len(self.weights)} weight tensors: {min(unique)} to {max(unique)} distinct values each")
        lines.append("  full integer" if self.is_full_integer else
                     "  float ops: " + ", ".join(f"{op} ({name})" for op, name in self.float_ops))
        return "\n".join(lines)


def _tensor(detail, constant):
    params = detail.get("quantization_parameters", {})
    return {
        "index": detail["index"], "name": detail["name"], "dtype": np.dtype(detail["dtype"]).name,
        "shape": tuple(int(d) for d in detail["shape"]), "scales": [float(s) for s in params.get("scales", [])],
        "zero_points": [int(z) for z in params.get("zero_points", [])], "constant": constant,
    }


def inspect_tflite(tflite):
    """Lists the ops, tensor types, quantization parameters, size and weight sparsity of a .tflite model.

    `kopt.convert.inspect` calls this for .tflite files.

    Args:
        tflite: the model's bytes or a path to it.

    Returns:
        A `TFLiteInfo` (print it for a summary; `to_dict()` for JSON).
    """
    content = read_model(tflite)
    it = interpreter(content, delegates=False)
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = _ops(it)
    produced = {i for op in ops for i in op["outputs"]}
    graph_io = {d["index"] for d in it.get_input_details() + it.get_output_details()}
    constant = {i for i in details if i not in produced and i not in graph_io}
    referenced = {int(i) for op in ops for i in list(op["inputs"]) + list(op["outputs"])}
    tensors = {i: _tensor(d, i in constant) for i, d in details.items()}

    zeros = total = 0
    float_ops, described, weights = [], [], []
    for op in ops:
        name = op["op_name"]
        ins = [tensors[i] for i in op["inputs"] if i >= 0]
        outs = [tensors[i] for i in op["outputs"]]
        described.append({"op": name, "inputs": ins, "outputs": outs})
        if name in _TFLITE_WEIGHT_INPUT and len(op["inputs"]) > _TFLITE_WEIGHT_INPUT[name]:
            weight = op["inputs"][_TFLITE_WEIGHT_INPUT[name]]
            if weight in constant:
                values = it.get_tensor(weight)
                zeros += int(np.count_nonzero(values == 0))
                total += values.size
                weights.append(_weight_summary(name, tensors[weight], values, details[weight]))
        activations = [t for t in ins + outs if not t["constant"]]
        if name not in ("QUANTIZE", "DEQUANTIZE") and any(t["dtype"] in _FLOAT for t in activations):
            float_ops.append((name, outs[0]["name"] if outs else ""))
        elif name == "DEQUANTIZE" and any(o["index"] not in graph_io for o in outs):
            float_ops.append((name, outs[0]["name"]))  # a float island inside the graph
    return TFLiteInfo(
        size_bytes=len(content), gzip_bytes=len(gzip.compress(content, 9)), ops=described,
        op_counts=dict(collections.Counter(op["op"] for op in described)),
        inputs=[tensors[d["index"]] for d in it.get_input_details()],
        outputs=[tensors[d["index"]] for d in it.get_output_details()],
        # Only the file's tensors: the interpreter also lists its scratch buffers (e.g. im2col), which no op
        # names as an input or output.
        tensors=[t for i, t in tensors.items() if i in graph_io or i in referenced],
        zero_weight_fraction=zeros / total if total else 0.0, float_ops=float_ops, weights=weights,
    )


def _weight_summary(op, tensor, values, detail):
    """Distinct values and zeros of one weight tensor (per output channel too when it is quantized per channel)."""
    axis = detail.get("quantization_parameters", {}).get("quantized_dimension", 0)
    per_channel = len(tensor["scales"]) > 1 and values.ndim > 0
    return {
        "name": tensor["name"], "op": op, "shape": tensor["shape"], "dtype": tensor["dtype"],
        "unique_values": int(np.unique(values).size),
        "unique_per_channel": (max(int(np.unique(np.take(values, c, axis=axis)).size)
                                   for c in range(values.shape[axis])) if per_channel else None),
        "zeros": int(np.count_nonzero(values == 0)),
    }


def _to_file_type(batch, detail):
    """Float samples -> the dtype of an input tensor (quantized with its scale and zero point if it has them)."""
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        if scale:
            info = np.iinfo(dtype)
            return np.clip(np.round(np.asarray(batch, "float32") / scale + zero), info.min, info.max).astype(dtype)
    return np.asarray(batch).astype(dtype)


def _from_file_type(y, detail):
    """An output tensor -> float32 (dequantized if it is a quantized integer tensor)."""
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        scale, zero = detail["quantization"]
        if scale:
            return ((y.astype("float32") - zero) * scale).astype("float32")
    return np.asarray(y).astype("float32")


def signature_names(tflite, signature_key=None):
    """`(input names, output names)` of a signature of a .tflite model (its only or first one by default).

    Args:
        tflite: the model's bytes or a path.
        signature_key: which signature; None: the first ("serving_default" for
            files made from a SavedModel).

    Returns:
        Two lists of names, or `([], [])` when the file has no signature.
    """
    signatures = interpreter(tflite, delegates=False).get_signature_list()
    if not signatures:
        return [], []
    entry = signatures[signature_key or next(iter(signatures))]
    return list(entry["inputs"]), list(entry["outputs"])


def output_scales(tflite, signature_key=None):
    """The int8/int16 quantization step of each signature output of a .tflite model.

    For a quantized output tensor, its scale; for a float output computed by a
    final DEQUANTIZE, the scale of the quantized tensor it dequantizes; else 0.

    Args:
        tflite: the model's bytes or a path.
        signature_key: which signature; None: the first one.

    Returns:
        A dict from signature output name to a float scale (0.0: not quantized).
    """
    it = interpreter(tflite, delegates=False)
    signatures = it.get_signature_list()
    if not signatures:
        return {}
    details = it.get_signature_runner(signature_key or next(iter(signatures))).get_output_details()
    producers = {out: op for op in _ops(it) for out in op["outputs"]}
    tensors = {d["index"]: d for d in it.get_tensor_details()}

    def scale(index):
        params = tensors[index].get("quantization_parameters", {})
        scales = params.get("scales", [])
        return float(scales[0]) if len(scales) == 1 else 0.0

    result = {}
    for name, detail in details.items():
        value = scale(detail["index"])
        op = producers.get(detail["index"])
        if not value and op is not None and op["op_name"] == "DEQUANTIZE":
            value = scale(op["inputs"][0])
        result[name] = value
    return result


def run_signature(tflite, inputs, batch_size=256, signature_key=None):
    """Runs a .tflite model by its signature's names, in batches; quantizes inputs and dequantizes outputs.

    Args:
        tflite: the model's bytes or a path.
        inputs: dict from signature input name to a float (or integer) array;
            all with the same number of samples.
        batch_size: samples per interpreter call.
        signature_key: which signature; None: the first one.

    Returns:
        A dict from signature output name to a float32 array.
    """
    it = interpreter(tflite)
    signatures = it.get_signature_list()
    if not signatures:
        raise ValueError("The .tflite model has no signature, so its inputs cannot be matched by name. "
                         "Convert it from a SavedModel (kopt.convert.to_tflite does).")
    runner = it.get_signature_runner(signature_key or next(iter(signatures)))
    input_details, output_details = runner.get_input_details(), runner.get_output_details()
    if set(inputs) != set(input_details):
        raise ValueError(f"The .tflite signature has inputs {sorted(input_details)}, got {sorted(inputs)}.")

    def call(batch):
        feed = {name: _to_file_type(x, input_details[name]) for name, x in batch.items()}
        return {name: _from_file_type(y, output_details[name]) for name, y in runner(**feed).items()}

    return run_in_batches(call, inputs, batch_size)


def run(tflite, x, batch_size=256):
    """Runs a single-input model on `x` in batches; quantizes inputs and dequantizes outputs as needed.

    Returns:
        The (first) output as a float32 array.
    """
    it = interpreter(tflite)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    results = []
    for start in range(0, len(x), batch_size):
        batch = np.asarray(x[start:start + batch_size])
        it.resize_tensor_input(inp["index"], batch.shape)
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        it.set_tensor(inp["index"], _to_file_type(batch, inp))
        it.invoke()
        results.append(_from_file_type(it.get_tensor(out["index"]), out))
    return np.concatenate(results)


def _signature_input_names(it):
    """`{tensor index: signature input name}` (empty for a file without a signature)."""
    signatures = it.get_signature_list()
    if not signatures:
        return {}
    runner = it.get_signature_runner(next(iter(signatures)))
    return {details["index"]: name for name, details in runner.get_input_details().items()}


def evaluate(tflite, x, y, batch_size=256):
    """Top-1 accuracy of a classifier .tflite model on `(x, y)`, run in batches.

    Args:
        tflite: the model's bytes or a path.
        x: inputs, float (int8 models are quantized with the file's input parameters); for a model with several
            inputs (token ids, padding mask ...), a dict from signature input name to array (a model from
            `to_tflite` names them as the Keras inputs). A file with several outputs is scored on its first.
        y: integer labels, or one-hot labels.
        batch_size: samples per interpreter call.

    Returns:
        Accuracy in [0, 1].

    Example:

    ```python
    accuracy = kopt.convert.evaluate(kopt.convert.to_tflite(model, quantization=None, validate=False), x, y.argmax(-1))
    ```
    """
    y = np.asarray(y)
    if isinstance(x, dict):
        counts = {len(v) for v in x.values()}
        if counts != {len(y)}:
            raise ValueError(f"`x` has {sorted(counts)} samples per input but `y` has {len(y)}.")
        predictions = next(iter(run_signature(tflite, x, batch_size).values()))
    else:
        x = np.asarray(x)
        if len(x) != len(y):
            raise ValueError(f"`x` has {len(x)} samples but `y` has {len(y)}.")
        predictions = run(tflite, x, batch_size)
    labels = y.argmax(-1) if y.ndim > 1 else y
    return float(np.mean(predictions.argmax(-1) == labels))


@dataclasses.dataclass
class BenchmarkResult:
    """Latency of one interpreter invocation, in milliseconds."""

    median_ms: float
    mean_ms: float
    runs: int
    threads: int
    p10_ms: float = float("nan")  # the spread: 10th and 90th percentiles, standard deviation
    p90_ms: float = float("nan")
    stdev_ms: float = float("nan")

    def __float__(self):
        return self.median_ms


def benchmark(tflite, threads=1, runs=50, warmup=5, batch_size=1, input_shapes=None):
    """Median CPU latency of one inference with LiteRT's default (XNNPACK) CPU kernels.

    Args:
        tflite: the model's bytes or a path.
        threads: interpreter threads.
        runs: timed invocations.
        warmup: untimed invocations first.
        batch_size: batch size of the timed input.
        input_shapes: shapes without the batch dimension for inputs whose other dimensions are not fixed in the
            file (a transformer's sequence length): a dict from signature input name (the Keras input's name)
            to a tuple, e.g. `{"token_ids": (128,), "padding_mask": (128,)}`. Required for such inputs.

    Returns:
        A `BenchmarkResult` (`float(result)` is the median in ms).

    Example:

    ```python
    result = kopt.convert.benchmark(kopt.convert.to_tflite(model, quantization=None, validate=False), runs=5)
    ```
    """
    if runs < 1:
        raise ValueError(f"`runs` must be >= 1, got {runs}.")
    it = interpreter(tflite, threads=threads)
    names = _signature_input_names(it)
    input_shapes = dict(input_shapes or {})
    unknown = sorted(set(input_shapes) - set(names.values()))
    if unknown:
        raise ValueError(f"`input_shapes` names inputs the file does not have: {unknown}; its inputs are "
                         f"{sorted(names.values())}.")
    for inp in it.get_input_details():  # every input, so multi-input models run on defined data
        name = names.get(inp["index"], inp["name"])
        if name in input_shapes:
            shape = [batch_size] + [int(d) for d in input_shapes[name]]
        else:
            signature = inp.get("shape_signature", inp["shape"])
            if any(int(d) < 0 for d in signature[1:]):
                raise ValueError(
                    f"Input '{name}' of the file has dimensions that are not fixed ({tuple(signature)}), e.g. a "
                    f"sequence length: pass input_shapes={{'{name}': (...)}} with the shape to time, without the "
                    "batch dimension.")
            shape = [batch_size] + [int(d) for d in inp["shape"][1:]]
        it.resize_tensor_input(inp["index"], shape)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for inp in it.get_input_details():
        shape = [int(d) for d in inp["shape"]]
        if np.issubdtype(inp["dtype"], np.integer) and inp["quantization"][0]:  # a quantized float input
            info = np.iinfo(inp["dtype"])
            data = rng.integers(info.min, info.max + 1, size=shape).astype(inp["dtype"])
        elif np.issubdtype(inp["dtype"], np.integer):  # token ids, masks: 1 is a valid id and "not masked"
            data = np.ones(shape, inp["dtype"])
        else:
            data = rng.random(shape).astype(inp["dtype"])
        it.set_tensor(inp["index"], data)
    for _ in range(warmup):
        it.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    p10, p90 = np.percentile(times, [10, 90])
    return BenchmarkResult(statistics.median(times), statistics.fmean(times), runs, threads, float(p10), float(p90),
                           statistics.pstdev(times))


def count_ops(tflite):
    """Ops of a .tflite model with a quantized output, other than QUANTIZE/DEQUANTIZE (its depth).

    Shape arithmetic (SHAPE, STRIDED_SLICE, PACK ... on int32) and float ops do
    not count: this is the number of places the file writes quantized
    activations, where integer rounding can differ from the QAT simulation.
    """
    return sum(1 for op in inspect_tflite(tflite).ops
               if op["op"] not in ("QUANTIZE", "DEQUANTIZE") and any(t["scales"] for t in op["outputs"]))
