"""Ground truth for the convert tests: LiteRT's interpreter run by signature name, NumPy quantization and SQNR.

Independent of kopt's own runner (`kopt.convert._litert.run_signature`) and SQNR (`kopt.convert.validation`).
"""

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.tools import flatbuffer_utils


def litert(content, feeds):
    """Runs the file's signature in LiteRT on float `feeds` {input name: array}; float outputs by name."""
    runner = Interpreter(model_content=bytes(content)).get_signature_runner()
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    quantized = {}
    for name, x in feeds.items():
        scale, zero = inputs[name]["quantization"]
        dtype = inputs[name]["dtype"]
        if np.issubdtype(dtype, np.integer) and scale:  # int8 / int16 inputs: q = round(x / scale) + zero
            x = np.clip(np.round(x / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max)
        quantized[name] = x.astype(dtype)
    results = {}
    for name, y in runner(**quantized).items():
        scale, zero = outputs[name]["quantization"]
        quantized_output = np.issubdtype(outputs[name]["dtype"], np.integer) and scale
        results[name] = (y.astype(np.float32) - zero) * scale if quantized_output else y
    return results


def np_sqnr(reference, got):
    """10 log10(sum(reference^2) / sum((reference - got)^2)), in dB."""
    reference = reference.astype(np.float64)
    return 10 * np.log10(np.sum(reference ** 2) / np.sum((reference - got) ** 2))


def only_output(content, x):
    """The only output of a single-input file on `x`."""
    (name,) = Interpreter(model_content=bytes(content)).get_signature_list()["serving_default"]["inputs"]
    (y,) = litert(content, {name: x}).values()
    return y


def scale_activation(content, op_name, factor):
    """The file with the output scale of the first `op_name` op multiplied by `factor` (a wrong range)."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    op = next(op for op in graph.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == op_name)
    tensor = graph.tensors[op.outputs[0]]
    tensor.quantization.scale = [s * factor for s in tensor.quantization.scale]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def output_scale(content, name):
    """The quantization scale of a signature output as LiteRT reports it (0.0 for a float output)."""
    scale, _ = Interpreter(model_content=bytes(content)).get_signature_runner().get_output_details()[name][
        "quantization"]
    return scale


def decisive(reference, scale):
    """Samples whose reference top-2 margin exceeds 2 steps, a step = max(output scale, range / 255)."""
    top2 = np.sort(reference, -1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) > 2 * max(scale, (reference.max() - reference.min()) / 255)


def count_ops(content):
    """Operators of the file's main graph with a quantized output, other than QUANTIZE/DEQUANTIZE."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]

    def quantized(index):
        quantization = graph.tensors[index].quantization
        return quantization is not None and quantization.scale is not None and len(quantization.scale) > 0

    return sum(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) not in ("QUANTIZE", "DEQUANTIZE")
               and any(quantized(i) for i in op.outputs) for op in graph.operators)


def file_sqnr(model, content, x):
    """SQNR (dB) of a single-input, single-output file (run in LiteRT) against the Keras `model` on `x`."""
    reference = np.asarray(model(x, training=False), np.float64)
    return np_sqnr(reference, np.asarray(only_output(content, x), np.float64).reshape(reference.shape))
