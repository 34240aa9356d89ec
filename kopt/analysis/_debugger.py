"""TFLite's QuantizationDebugger on a Keras model's int8 conversion: per-op rmse/scale, by Keras layer name."""

import contextlib
import csv
import io
import logging
import math
import re
import tempfile

from kopt.convert import _data as data_lib

logger = logging.getLogger("kopt")


def _converter(model, samples, calibrate):
    """A TFLiteConverter of `model` (exported as a SavedModel, as `to_tflite` does) set up for int8, and the
    export folder to delete after use."""
    import tensorflow as tf

    from kopt.quantization.integer_forms import integer_lowering

    folder = tempfile.TemporaryDirectory(prefix="kopt-sensitivity-")
    with integer_lowering(model):
        model.export(folder.name, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(folder.name)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    names = [spec.name for spec in data_lib.model_inputs(model)]

    def representative_dataset():
        for i in range(data_lib.count(samples)):
            yield {name: s[i:i + 1] for name, s in zip(names, samples)}

    if calibrate:
        converter.representative_dataset = representative_dataset
    return converter, folder


def _coded_copy(model):
    """A copy of `model` whose layers are renamed `kopts<i>x` (wrapped layers `kopts<i>y`), and `{code: name}`.

    TFLite's tensor names carry the name scopes of the export, where TensorFlow appends `_1`, `_2` ... to
    names it has seen (`conv2d` becomes `conv2d_1`, which may be another layer's name): coded names make the
    mapping back to layers exact. A QAT layer maps to the name of the layer it wraps, as the report's rows.
    """
    from kopt._keras.clone import copy_layer, rewrite_model, walk_layers
    from kopt._keras.nodes import producer
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
    # The model's output tensors are named after the signature ('StatefulPartitionedCall:<i>'), not their layers:
    # the i-th in the order of the signature's keys (output_0, output_1 ... sorted as strings).
    outputs = list(getattr(copy, "outputs", None) or [])
    keys = sorted(f"output_{j}" for j in range(len(outputs)))
    for i, key in enumerate(keys):
        last = producer(outputs[int(key.split("_")[1])])
        if last is not None and last.name in names:
            names[f"(output {i})"] = names[last.name]
    return copy, names


def _float_model(qat):
    """The float model a QAT model trained: each `QuantizeWrapper` replaced by the layer it wraps (with its
    effective weights: a pruned kernel's mask applied), each `QuantizeLayer` by an Identity."""
    import keras

    from kopt._keras.clone import copy_layer, copy_with_values, rewrite_model
    from kopt.quantization import QuantizeLayer, QuantizeWrapper

    def unwrap(layer):
        if isinstance(layer, QuantizeWrapper):
            return copy_with_values(layer.layer, layer.effective_weights())
        if isinstance(layer, QuantizeLayer):
            return keras.layers.Identity(name=layer.name)
        return copy_layer(layer)

    return rewrite_model(qat, unwrap)


def _layers_in(tensor, names):
    found = []
    output = re.fullmatch(r"StatefulPartitionedCall(?:_\d+)?:(\d+)", tensor)
    if output:
        key = f"(output {output.group(1)})"
        return [names[key]] if key in names else []
    for code in re.findall(r"kopts\d+[xy]", tensor):
        if names[code] not in found:
            found.append(names[code])
    return found


def op_statistics(model, samples, quantization_aware):
    """Runs `tf.lite.experimental.QuantizationDebugger` on the int8 conversion of `model` over `samples`.

    The conversion is post-training int8 calibrated on `samples`, of `with_integer_forms(model)` as
    `kopt.convert.to_tflite` converts a float model. The debugger cannot verify a QAT model's own file (its ranges
    come from FakeQuant ops, which leave no float op to compare with): for a QAT model it runs on the float model
    that QAT trained (its wrappers removed), so the figures are post-training ones for the QAT-trained weights.

    Args:
        model: a Keras model.
        samples: one array per model input.
        quantization_aware: whether `model` is a QAT model.

    Returns:
        A list of dicts, one per op the debugger verified: `op` (TFLite op name), `tensor` (the output tensor's
        name), `rmse_over_scale`, `scale`, `layers` (Keras layer names the tensor name carries, of `model` and
        of the converted copy). An empty list when the debugger cannot run (logged).
    """
    import tensorflow as tf

    from kopt.quantization import with_integer_forms

    converted, codes = _coded_copy(_float_model(model) if quantization_aware else with_integer_forms(model))
    inputs = data_lib.model_inputs(converted)
    order = []

    def debug_dataset():
        for i in range(data_lib.count(samples)):
            yield [samples[j][i:i + 1] for j in order]

    folder = None
    try:
        converter, folder = _converter(converted, samples, calibrate=True)
        with contextlib.redirect_stdout(io.StringIO()):
            debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_dataset)
        from ai_edge_litert.interpreter import Interpreter

        details = Interpreter(model_content=debugger.quant_model).get_input_details()
        names = [spec.name for spec in inputs]
        for detail in details:  # the interpreter's input order, matched by signature name
            matches = [j for j, n in enumerate(names) if n in detail["name"]]
            order.append(matches[-1] if matches else len(order))
        debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
    except Exception as error:  # the debugger supports fewer models than the converter (custom ops, QAT forms)
        logger.info("sensitivity: TFLite's QuantizationDebugger could not run on '%s' (%s: %s); the report has no "
                    "per-op rmse/scale", model.name, type(error).__name__, str(error).splitlines()[0][:200])
        return []
    finally:
        if folder is not None:
            folder.cleanup()
    result = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        mse = float(row["mean_squared_error"])
        layers = _layers_in(row["tensor_name"], codes)
        result.append({"op": row["op_name"], "tensor": row["tensor_name"], "scale": scale,
                       "rmse_over_scale": math.sqrt(mse) / scale if scale > 0 and math.isfinite(mse) else None,
                       "layers": layers})
    return result
