"""Looking inside an ONNX model: ops, inputs and outputs, QuantizeLinear parameters, size and weight sparsity."""

import collections
import dataclasses
import gzip
import os

import numpy as np

from kopt.convert._files import ONNXModel, read_bytes, to_plain

# Ops whose weight is one input (its index): the weights `zero_weight_fraction` counts.
_ONNX_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "MatMul": 1, "Gemm": 1, "ConvInteger": 1, "MatMulInteger": 1,
                 "QLinearConv": 3, "QLinearMatMul": 3}
# Ops a weight may pass through between its initializer and the op that uses it (their first input).
_PASS_THROUGH = ("Identity", "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "DequantizeLinear")


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError('Reading ONNX models needs the `onnx` package: pip install "kopt-keras[onnx]"') from None
    return onnx


def is_onnx(model):
    """Whether `model` is an ONNX model: an `ONNXModel`, a path ending in .onnx, or ONNX bytes (not .tflite).

    Bytes (or a file with another suffix) count as ONNX when they are not a
    .tflite flatbuffer (which carries "TFL3" at bytes 4-8) and start as an
    ONNX `ModelProto` does (field 1, `ir_version`: byte 0x08).
    """
    if isinstance(model, ONNXModel):
        return True
    if isinstance(model, (str, os.PathLike)):
        if os.fspath(model).lower().endswith(".onnx"):
            return True
        if not os.path.isfile(model):
            return False
        with open(model, "rb") as f:
            head = f.read(8)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        head = bytes(model[:8])
    else:
        return False
    return head[4:8] != b"TFL3" and head[:1] == b"\x08"


def read_onnx(model):
    """The bytes of an ONNX model given as bytes or a path."""
    return read_bytes(model, ".onnx", "an ONNX model")


def load(model):
    """An `onnx.ModelProto` from bytes, a path or a ModelProto."""
    onnx = _require_onnx()
    if isinstance(model, onnx.ModelProto):
        return model
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(read_onnx(model))
    except Exception as error:  # protobuf's DecodeError
        raise ValueError(f"Not an ONNX model: {error}") from None
    if not proto.HasField("graph"):
        raise ValueError("Not an ONNX model: it has no graph.")
    return proto


def _dtype(elem_type):
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return f"onnx type {elem_type}"


def _value_info(value):
    shape = None
    if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)
    return {"name": value.name, "dtype": _dtype(value.type.tensor_type.elem_type), "shape": shape}


class _Graph:
    """The main graph's constants (initializers and Constant nodes) and the producer of every tensor."""

    def __init__(self, proto):
        from onnx import numpy_helper

        graph = proto.graph
        self.proto = proto
        self.initializers = {t.name: t for t in graph.initializer}
        self.constant_nodes = {}
        for node in graph.node:
            if node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value":
                        self.constant_nodes[node.output[0]] = attribute.t
        self.producers = {out: node for node in graph.node for out in node.output}
        self._to_array = numpy_helper.to_array

    def constant(self, name):
        """The value of a constant tensor, or None."""
        tensor = self.initializers.get(name, self.constant_nodes.get(name))
        return None if tensor is None else self._to_array(tensor)

    def is_constant(self, name):
        """Whether `name` is computed from constants only, through `_PASS_THROUGH` ops."""
        return self.source(name) is not None

    def source(self, name):
        """`(constant array, the DequantizeLinear node on the way or None)` behind a tensor, or None."""
        dequantize = None
        for _ in range(16):
            value = self.constant(name)
            if value is not None:
                return value, dequantize
            node = self.producers.get(name)
            if node is None or node.op_type not in _PASS_THROUGH or not node.input:
                return None
            if node.op_type == "DequantizeLinear":
                dequantize = node
            name = node.input[0]
        return None

    def quantization(self, node):
        """`(scales, zero_points, axis)` of a QuantizeLinear / DequantizeLinear node (zero point 0 when absent)."""
        scales = self.constant(node.input[1]) if len(node.input) > 1 else None
        zero = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        scales = np.atleast_1d(scales if scales is not None else np.array([], "float32"))
        zero = np.atleast_1d(zero if zero is not None else np.zeros(scales.shape, "uint8"))
        return scales, zero, (axis if scales.size > 1 else None)


@dataclasses.dataclass
class ONNXInfo:
    """What `kopt.convert.inspect` finds in an ONNX model.

    Attributes:
        size_bytes: the file's size.
        gzip_bytes: its size gzipped (level 9).
        ops: every node of the main graph: `{"op", "name", "inputs", "outputs"}`
            (tensor names).
        op_counts: nodes per op type.
        inputs, outputs: the graph's inputs and outputs: `{"name", "dtype",
            "shape"}` (None for a dynamic dimension).
        tensors: every quantized tensor: one per QuantizeLinear node (`"name"`:
            the node's int8/uint8 output, `"input"`: the float tensor it
            quantizes) and one per integer initializer read through a
            DequantizeLinear (a weight stored quantized; `"name"` and
            `"input"`: the initializer), each with `"node"`, `"dtype"`,
            `"shape"`, `"scales"`, `"zero_points"`, `"axis"` (None when
            per-tensor) and `"constant"` (a weight, not an activation).
        zero_weight_fraction: zeros among the weights of Conv, ConvTranspose,
            MatMul and Gemm nodes (constant inputs, dequantized if stored
            through a DequantizeLinear).
        opset: the default-domain opset.
        producer: the producer name and version recorded in the file.
    """

    size_bytes: int
    gzip_bytes: int
    ops: list
    op_counts: dict
    inputs: list
    outputs: list
    tensors: list
    zero_weight_fraction: float
    opset: int
    producer: str = ""

    @property
    def is_quantized(self):
        """Whether the model quantizes activations (QuantizeLinear on a non-constant tensor: a QDQ model)."""
        return any(not t["constant"] for t in self.tensors)

    def to_dict(self):
        """The information as plain dicts, lists, strings and numbers (for `json.dumps`)."""
        return {"format": "onnx", **to_plain(dataclasses.asdict(self)), "is_quantized": self.is_quantized}

    def __str__(self):
        lines = [f"ONNX model: {self.size_bytes:,} bytes ({self.gzip_bytes:,} gzipped), opset {self.opset}, "
                 f"{sum(self.op_counts.values())} nodes, {self.zero_weight_fraction:.1%} zero weights"]
        lines += [f"  {name:24s} x{count}" for name, count in sorted(self.op_counts.items())]
        for label, values in (("input", self.inputs), ("output", self.outputs)):
            for v in values:
                shape = "?" if v["shape"] is None else "(" + ", ".join(
                    "None" if d is None else str(d) for d in v["shape"]) + ")"
                lines.append(f"  {label} {v['name']}: {v['dtype']} {shape}")
        activations = [t for t in self.tensors if not t["constant"]]
        if activations:
            dtypes = "/".join(sorted({t["dtype"] for t in activations}))
            scales = [s for t in activations for s in t["scales"]]
            spread = f", scales {min(scales):.4g} to {max(scales):.4g}" if scales else ""
            lines.append(f"  QDQ: {len(activations)} quantized activations ({dtypes}){spread}")
            weights = len(self.tensors) - len(activations)
            if weights:
                lines.append(f"  {weights} quantized weights")
        else:
            lines.append("  float (no QuantizeLinear on activations)")
        return "\n".join(lines)


def _weight_values(graph, name):
    """The float value of a constant weight (dequantized if it goes through a DequantizeLinear), or None."""
    found = graph.source(name)
    if found is None:
        return None
    value, dequantize = found
    if dequantize is None:
        return value
    scales, zero, axis = graph.quantization(dequantize)
    if value.ndim and axis is not None:
        shape = [1] * value.ndim
        shape[axis] = -1
        scales, zero = scales.reshape(shape), zero.reshape(shape)
    return (value.astype("float64") - zero.astype("float64")) * scales


def _shapes(proto):
    """Tensor name -> shape, from ONNX shape inference (empty if it fails)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # shape inference is best-effort: a model it cannot follow still inspects
        return {}
    return {v.name: _value_info(v)["shape"] for v in list(inferred.graph.value_info) + list(inferred.graph.input)}


def inspect_onnx(model):
    """Lists the ops, inputs/outputs, QuantizeLinear parameters, size and weight sparsity of an ONNX model.

    `kopt.convert.inspect` calls this for ONNX models.

    Args:
        model: the model's bytes (e.g. an `ONNXModel`) or a path to it.

    Returns:
        An `ONNXInfo` (print it for a summary).
    """
    content = read_onnx(model)
    proto = load(content)
    graph = _Graph(proto)
    initializers = set(graph.initializers)
    shapes = _shapes(proto)

    ops, tensors = [], []
    zeros = total = 0
    for node in proto.graph.node:
        ops.append({"op": node.op_type, "name": node.name, "inputs": list(node.input), "outputs": list(node.output)})
        index = _ONNX_WEIGHT_INPUT.get(node.op_type)
        if index is not None and len(node.input) > index:
            values = _weight_values(graph, node.input[index])
            if values is not None:
                zeros += int(np.count_nonzero(values == 0))
                total += int(values.size)
        stored = node.op_type == "DequantizeLinear" and node.input[0] in initializers
        if node.op_type == "QuantizeLinear" or stored:
            scales, zero, axis = graph.quantization(node)
            name = node.input[0] if stored else node.output[0]
            tensors.append({
                "name": name, "input": node.input[0], "node": node.name, "dtype": zero.dtype.name,
                "shape": tuple(graph.initializers[name].dims) if stored else shapes.get(node.input[0]),
                "scales": [float(s) for s in scales], "zero_points": [int(z) for z in zero], "axis": axis,
                "constant": stored or graph.is_constant(node.input[0]),
            })
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    producer = " ".join(p for p in (proto.producer_name, proto.producer_version) if p)
    return ONNXInfo(
        size_bytes=len(content), gzip_bytes=len(gzip.compress(content, 9)), ops=ops,
        op_counts=dict(collections.Counter(op["op"] for op in ops)),
        inputs=[_value_info(v) for v in proto.graph.input if v.name not in initializers],
        outputs=[_value_info(v) for v in proto.graph.output], tensors=tensors,
        zero_weight_fraction=zeros / total if total else 0.0, opset=int(opset), producer=producer,
    )


def activation_quantizers(model):
    """How many QuantizeLinear nodes of an ONNX model quantize activations (not constants): its QDQ depth.

    Args:
        model: bytes, a path or an `onnx.ModelProto`.
    """
    proto = load(model)
    graph = _Graph(proto)
    return sum(1 for node in proto.graph.node
               if node.op_type == "QuantizeLinear" and not graph.is_constant(node.input[0]))


def output_scales(model):
    """The quantization step of each graph output: the scale of a final (per-tensor) DequantizeLinear, else 0.

    Args:
        model: bytes, a path or an `onnx.ModelProto`.

    Returns:
        A dict from output name to a float scale (0.0: not quantized).
    """
    proto = load(model)
    graph = _Graph(proto)
    result = {}
    for output in proto.graph.output:
        name, scale = output.name, 0.0
        node = graph.producers.get(name)
        while node is not None and node.op_type == "Identity":
            node = graph.producers.get(node.input[0])
        if node is not None and node.op_type == "DequantizeLinear":
            scales, _, axis = graph.quantization(node)
            scale = float(scales[0]) if scales.size == 1 else 0.0
        result[name] = scale
    return result


def unknown_ops(model):
    """Nodes whose op no ONNX opset of the model defines (ops tf2onnx could not convert and left as they were).

    Args:
        model: bytes, a path or an `onnx.ModelProto`.

    Returns:
        A list of `(op type, node name)`.
    """
    onnx = _require_onnx()
    proto = load(model)
    versions = {o.domain: o.version for o in proto.opset_import}
    unknown = []
    for node in proto.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            onnx.defs.get_schema(node.op_type, versions.get(domain, versions.get("", 1)), domain)
        except Exception:  # onnx.defs.SchemaError: no such op at that version
            unknown.append((node.op_type, node.name))
    return unknown
