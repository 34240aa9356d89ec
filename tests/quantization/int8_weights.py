"""Ground truth for scheme tests: the int8 weight tensors of a .tflite file, read with LiteRT's interpreter.

Independent of `kopt.convert.inspect`: constant tensors are found in the flatbuffer (a tensor whose buffer holds
data), their values and quantization parameters come from `ai_edge_litert`'s interpreter.
"""

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.tools import flatbuffer_utils


def int8_weights(content):
    """`[(name, values, quantized_dimension, number of scales)]` for every constant int8 tensor of rank >= 2."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(bytes(content)))
    graph = model.subgraphs[0]
    constant = {i for i, t in enumerate(graph.tensors)
                if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data) > 0}
    interpreter = Interpreter(model_content=bytes(content), experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    found = []
    for detail in interpreter.get_tensor_details():
        if detail["index"] in constant and detail["dtype"] == np.int8 and len(detail["shape"]) >= 2:
            params = detail["quantization_parameters"]
            found.append((detail["name"], interpreter.get_tensor(detail["index"]), int(params["quantized_dimension"]),
                          len(params["scales"])))
    return found


def distinct_per_channel(values, axis, scales):
    """Distinct values of each channel along `axis` (per-axis tensors), or of the whole tensor."""
    if scales <= 1:
        return [len(np.unique(values))]
    moved = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    return [len(np.unique(row)) for row in moved]
