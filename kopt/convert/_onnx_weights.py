"""A QAT model's ONNX weights stored as 8-bit integers + DequantizeLinear, on the grid the QAT model trained with.

tf2onnx turns each activation FakeQuant of a QAT model into a QuantizeLinear/DequantizeLinear pair, but it
folds the weight FakeQuants into float constants: weights that hold int8 grid values (`q * scale`, q in
-127..127, per output channel for convolutions) stored as float32. onnxruntime then quantizes those
weights again for its integer kernels, per tensor (measured: the digits CNN's per-channel conv kernels got one
scale each), which moves them off the QAT grid: its file agreed with its QAT model at 40.4 dB, where a
float run of the same QDQ graph gives 66.7 dB. Stored as int8 with the grid's own scales behind a
DequantizeLinear, they are the exact values the QAT model computes with (the file agrees at 51.4 dB, as
close as its int8 .tflite file), the file is a standard QDQ model that runtimes run in integer kernels,
and its weights take a quarter of the bytes (the CNN's file: 296 KB -> 83 KB).

The integers are stored as uint8 with zero point 128 (`q + 128`), not as int8 with zero point 0: the same
values, in the U8U8 form that onnxruntime computes exactly on every CPU. With int8 weights and uint8
activations (U8S8) onnxruntime's x86 kernels without VNNI (AVX2-only CPUs) multiply-add pairs of products
into saturating 16-bit integers (VPMADDUBSW), and a correct file agreed with its QAT model at 19.1 dB
instead of 51.6 dB (the digits CNN with BatchNormalization and DepthwiseConv2D, run under QEMU as a
Haswell CPU). Signed activations (S8S8) do not help: onnxruntime turns them into U8S8 on x86.

The grid is read from the values themselves: a weight (per output channel for Conv, per tensor for MatMul,
Gemm and ConvTranspose) is rewritten only when every value is `q * scale` for integers |q| <= 127, up to
float32 rounding; anything else (a layer the QAT model keeps in float) stays as it is.
"""

import numpy as np

from kopt.convert._onnx_info import load

# op -> (weight input index, per-channel axis of the weight or None)
_WEIGHT_INPUTS = {"Conv": (1, 0), "ConvTranspose": (1, None), "MatMul": (1, None), "Gemm": (1, None)}
# Weights are stored as uint8 around this zero point (U8U8, exact on every CPU; see the module docstring).
WEIGHT_ZERO_POINT = 128
_TOLERANCE = 1e-3  # of a grid step: FakeQuant's float32 output sits within ~1e-5 steps of the grid


def _on_grid(row):
    """The largest `k <= 127` for which `row / (max|row| / k)` is integral (within tolerance), or None."""
    peak = float(np.max(np.abs(row)))
    if peak == 0.0:
        return 127
    probe = row[:256]
    for k in range(127, 0, -1):
        step = peak / k
        if np.all(np.abs(probe / step - np.round(probe / step)) < _TOLERANCE) and \
                np.all(np.abs(row / step - np.round(row / step)) < _TOLERANCE):
            return k
    return None


def grid(values, axis=None):
    """`(q, scales)` with `values == q * scales` (int8 q, |q| <= 127), per slice along `axis`; else None.

    Args:
        values: a float array.
        axis: the channel axis (one scale per slice), or None (one scale).

    Returns:
        `(q, scales)`: an int8 array of `values`' shape and a float32 array of
        one scale per slice (shape `()` when `axis` is None); or None when the
        values are not on such a grid.
    """
    values = np.asarray(values, "float64")
    rows = values.reshape(1, -1) if axis is None else np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    scales = np.empty(len(rows))
    for i, row in enumerate(rows):
        k = _on_grid(row)
        if k is None:
            return None
        peak = float(np.max(np.abs(row)))
        scales[i] = peak / k if peak else 1.0
    shape = [1] * values.ndim
    if axis is not None:
        shape[axis] = -1
    q = np.round(values / scales.reshape(shape)).astype("int8")
    scales = scales.astype("float32")
    return q, (scales.reshape(()) if axis is None else scales)


def quantize_weights(content):
    """Rewrites the float weights of Conv/MatMul/Gemm/ConvTranspose nodes that lie on an int8 grid as QDQ.

    Each such initializer `w` becomes a uint8 initializer `w_quantized`
    (`q + 128`) with its scales and zero points (128), and a DequantizeLinear
    node whose output keeps the name `w`, so every node that used the weight
    reads the same values (see the module docstring for why not int8).
    Per-channel scales need opset 13 (DequantizeLinear's `axis`); below it,
    only per-tensor grids are rewritten.

    Args:
        content: the ONNX bytes.

    Returns:
        `(bytes, rewritten)`: the new ONNX bytes and how many weights were
        rewritten (the bytes are unchanged when none was).
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = load(content)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    initializers = {t.name: t for t in graph.initializer}
    done, new_nodes = set(), []
    for node in graph.node:
        weight_input = _WEIGHT_INPUTS.get(node.op_type)
        if weight_input is None or len(node.input) <= weight_input[0]:
            continue
        name = node.input[weight_input[0]]
        tensor = initializers.get(name)
        if name in done or tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(tensor)
        axis = weight_input[1] if opset >= 13 and values.ndim > 1 else None
        found = grid(values, axis) or (grid(values) if axis is not None else None)
        if found is None:
            continue
        q, scales = found
        per_channel = scales.ndim == 1
        graph.initializer.remove(tensor)
        graph.initializer.extend([
            numpy_helper.from_array((q.astype("int16") + WEIGHT_ZERO_POINT).astype("uint8"), f"{name}_quantized"),
            numpy_helper.from_array(scales, f"{name}_scale"),
            numpy_helper.from_array(np.full(scales.shape, WEIGHT_ZERO_POINT, "uint8"), f"{name}_zero_point"),
        ])
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"], [name],
            name=f"{name}_DequantizeLinear", **({"axis": axis} if per_channel else {})))
        done.add(name)
    if not done:
        return content, 0
    for value in [v for v in graph.input if v.name in done]:  # old IRs list initializers as inputs too
        graph.input.remove(value)
    nodes = new_nodes + list(graph.node)  # constants first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    return proto.SerializeToString(), len(done)
