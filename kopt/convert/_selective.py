"""Selective int8 quantization: one calibration of a float Keras model, any number of files that keep chosen
Keras layers float, and TFLite's per-op int8 error, all through `tf.lite.experimental.QuantizationDebugger`.

TFLite documents this as its way to keep ops float ("selective quantization": `QuantizationDebugOptions(
denylisted_nodes=...)` and `get_nondebug_quantized_model()`). The denylist names ops by their output tensors,
whose names carry the Keras layer names of the export; the model is converted as a copy whose layers are
renamed with unique codes, so each op maps back to its layers exactly.
"""

import contextlib
import io
import logging
import re

import keras

from kopt.convert import samples as data_lib
from kopt.convert import _litert as litert

logger = logging.getLogger("kopt")


def coded_copy(model):
    """A copy of `model` whose layers are renamed `kopts<i>x` (wrapped layers `kopts<i>y`), and `{code: name}`.

    TFLite's tensor names carry the name scopes of the export, where TensorFlow appends `_1`, `_2` ... to
    names it has seen (`conv2d` becomes `conv2d_1`, which may be another layer's name): coded names make the
    mapping back to layers exact. A QAT layer maps to the name of the layer it wraps.
    """
    from kopt._keras.clone import copy_layer, rewrite_model, walk_layers, with_input_names
    from kopt.quantization import QuantizeLayer, QuantizeWrapper

    copy = rewrite_model(model, copy_layer)
    names = {}
    for i, layer in enumerate(walk_layers(copy)):
        if isinstance(layer, QuantizeWrapper):
            name = layer.layer.name
            layer.layer.name = f"kopts{i}y"
            names[layer.layer.name] = name
        elif isinstance(layer, QuantizeLayer) and layer.name.startswith("quant_"):
            name = layer.name[len("quant_"):]
        else:
            name = layer.name
        layer.name = f"kopts{i}x"
        names[layer.name] = name
    names.update(output_layers(copy, lambda layer: names.get(layer.name)))
    return with_input_names(model, copy), names


def output_layers(model, name_of):
    """`{"(output i)": [layer names]}`: the layers that make each output of `model`'s file.

    The output tensors of the file are named after the signature ('StatefulPartitionedCall:<i>'), not their
    layers: the i-th in the order of the signature's keys (output_0, output_1 ... sorted as strings). A nested
    model's output names the nested model and its own last layer.

    Args:
        model: the Keras model converted.
        name_of: a function from a layer to the name to report (None: not reported).
    """
    from kopt._keras.nodes import producer

    outputs = list(getattr(model, "outputs", None) or [])
    keys = sorted(f"output_{j}" for j in range(len(outputs)))
    result = {}
    for i, key in enumerate(keys):
        chain, last = [], producer(outputs[int(key.split("_")[1])])
        while last is not None and name_of(last) is not None:
            chain.append(name_of(last))
            inner = getattr(last, "outputs", None) if isinstance(last, keras.Model) else None
            last = producer(inner[0]) if inner and len(inner) == 1 else None
        if chain:
            result[f"(output {i})"] = chain
    return result


def layers_in(tensor, names):
    """The Keras layer names (values of `names`, from `coded_copy`) that a tensor name of the file carries."""
    found = []
    output = re.fullmatch(r"StatefulPartitionedCall(?:_\d+)?:(\d+)", tensor)
    if output:
        # A tensor TFLite made next to an output (the float op before its QUANTIZE) gets the output's name with a
        # number appended ('...:0' -> '...:01'): the output's index is the longest prefix that is an index.
        digits = output.group(1)
        while digits:
            key = f"(output {digits})"
            if key in names and (digits == "0" or not digits.startswith("0")):
                return list(names[key])
            digits = digits[:-1]
        return []
    for code in re.findall(r"kopts\d+[xy]", tensor):
        if names[code] not in found:
            found.append(names[code])
    return found


def resolve_layers(patterns, layers, model_name, argument):
    """The names in `layers` (in their order) that `patterns` (names or regular expressions, matched in full)
    select; a ValueError naming `argument` for a pattern that selects none."""
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"`{argument}` must be a list of layer names or regular expressions, got "
                             f"{pattern!r} in it.")
        if pattern in layers:
            chosen.add(pattern)
            continue
        try:
            matched = [name for name in layers if re.fullmatch(pattern, name)]
        except re.error as error:
            raise ValueError(f"`{argument}`: {pattern!r} is neither a layer name nor a valid regular "
                             f"expression ({error}).") from None
        if not matched:
            shown = ", ".join(layers[:12]) + (" ..." if len(layers) > 12 else "")
            raise ValueError(f"`{argument}`: {pattern!r} matches no layer of '{model_name}' that has ops "
                             f"in the file. Layers with ops: {shown}.")
        chosen.update(matched)
    return [name for name in layers if name in chosen]


def decode_name(tensor, codes):
    """`tensor` (a name of a `coded_copy` export) with each layer code replaced by the layer's name."""
    return re.sub(r"kopts\d+[xy]", lambda m: codes[m.group(0)], tensor)


def decode_file(content, codes):
    """The .tflite `content` of a `coded_copy` export with its tensors named after the Keras layers again."""
    from tensorflow.lite.tools import flatbuffer_utils  # TFLite's own flatbuffer reader and writer

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.name:
                tensor.name = decode_name(tensor.name.decode(), codes).encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def file_layers(content, codes):
    """`[{"op", "tensors", "layers"}]` for every op of a `coded_copy` export's file, and the layer names with ops
    (in graph order)."""
    ops = []
    for op, tensors in litert.op_outputs(content):
        layers = [name for t in tensors for name in layers_in(t, codes)]
        ops.append({"op": op, "tensors": tensors, "layers": list(dict.fromkeys(layers))})
    return ops, list(dict.fromkeys(name for op in ops for name in op["layers"]))


class SelectiveQuantizer:
    """A float model calibrated once for full-int8 TFLite; `quantize(keep_float)` makes its files.

    Args:
        model: a float Keras model, with kopt's integer forms applied (as `to_tflite` converts it).
        samples: calibration samples, one array per model input.
        fully_quantize: int8 inputs and outputs (True) or float32 ones (False).
    """

    def __init__(self, model, samples, fully_quantize=True):
        import tensorflow as tf
        from ai_edge_litert.interpreter import Interpreter

        from kopt.convert._converter import tflite_converter

        self.model_name = model.name
        converted, self.codes = coded_copy(model)
        inputs = data_lib.model_inputs(converted)
        named = {spec.name: s for spec, s in zip(inputs, samples)}
        order = []
        self._samples = samples

        def debug_dataset():  # the interpreter's input order, matched by signature name (below)
            for i in range(data_lib.count(samples)):
                yield [samples[j][i:i + 1] for j in order]

        self._options = tf.lite.experimental.QuantizationDebugOptions
        self._fully_quantize = fully_quantize
        self._nodes = []
        self._stack = contextlib.ExitStack()
        converter = self._stack.enter_context(tflite_converter(converted, "int8", named))
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the MLIR quantizer prints its options
                self.debugger = tf.lite.experimental.QuantizationDebugger(
                    converter=converter, debug_dataset=debug_dataset,
                    debug_options=self._options(fully_quantize=fully_quantize))
        except BaseException:
            self._stack.close()
            raise
        names = [spec.name for spec in inputs]
        for detail in Interpreter(model_content=self.debugger.quant_model).get_input_details():
            matches = [j for j, n in enumerate(names) if n in detail["name"]]
            order.append(matches[-1] if matches else len(order))
        # Every op of the calibrated (float) model: its output tensors and the Keras layers they belong to.
        self.ops, self.layers = file_layers(self.debugger.calibrated_model, self.codes)

    def close(self):
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def resolve(self, patterns, argument="keep_float"):
        """The layer names (in graph order) that `patterns` select (see `resolve_layers`)."""
        return resolve_layers(patterns, self.layers, self.model_name, argument)

    def denylist(self, layers):
        """The output tensor names of every op that belongs to one of `layers` (TFLite's denylisted_nodes)."""
        layers = set(layers)
        return [op["tensors"][0] for op in self.ops if layers.intersection(op["layers"]) and op["tensors"]]

    def _denylist(self, nodes):
        """Sets the debugger's denylist (it re-quantizes its debug model when it changes)."""
        if nodes == self._nodes:
            return
        with contextlib.redirect_stdout(io.StringIO()):
            self.debugger.options = self._options(fully_quantize=self._fully_quantize, denylisted_nodes=nodes)
        self._nodes = nodes

    def quantize(self, keep_float=()):
        """The int8 file with the ops of `keep_float` (layer names) left float, as bytes."""
        try:
            self._denylist(self.denylist(keep_float))
        except ValueError as error:  # nothing left quantized: the debugger finds no op to verify
            raise ValueError(f"`keep_float` keeps every quantizable op of '{self.model_name}' float ({error}): "
                             "convert with quantization=None for a float file.") from None
        with contextlib.redirect_stdout(io.StringIO()):
            return self.debugger.get_nondebug_quantized_model()

    def decode(self, content):
        """The file `content` with its tensors named after the Keras layers again (not their codes)."""
        return decode_file(content, self.codes)

    def op_statistics(self):
        """TFLite's per-op int8 error of the all-int8 file: a list of dicts, one per op the debugger verified:
        `op`, `tensor`, `scale`, `rmse_over_scale` (RMS difference from the float op on the same quantized inputs,
        over the output scale; about 0.29 for rounding alone), `layers`."""
        import csv
        import math

        self._denylist([])
        self.debugger.run()
        dump = io.StringIO()
        self.debugger.layer_statistics_dump(dump)
        result = []
        for row in csv.DictReader(io.StringIO(dump.getvalue())):
            scale = float(row["scale"])
            mse = float(row["mean_squared_error"])
            result.append({"op": row["op_name"], "tensor": row["tensor_name"], "scale": scale,
                           "rmse_over_scale": math.sqrt(mse) / scale if scale > 0 and math.isfinite(mse) else None,
                           "layers": layers_in(row["tensor_name"], self.codes)})
        return result
