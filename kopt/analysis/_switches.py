"""Quantization that can be switched on and off layer by layer in one QAT model (for `sensitivity`).

Each quantizer of a kopt QAT model (weights, activations, outputs, internal tensors, inputs) is wrapped in a
`_Switched` quantizer that returns the fake-quantized tensor where its layer's flag is 1 and the tensor itself where
it is 0. The flags are variables, so one traced function of the model serves every combination. All of it is done
on a private copy of the model: the user's model is never changed.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from kopt._keras.clone import copy_layer, rewrite_model, walk_layers
from kopt._keras.sublayers import relative_path
from kopt.quantization import QuantizeLayer, QuantizeWrapper

_NOISE = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
          keras.layers.SpatialDropout3D, keras.layers.GaussianDropout, keras.layers.AlphaDropout)


# TFLite's int8 softmax/logistic/tanh have fixed output grids (scale 1/256 zero point -128; 1/128 and 0); kopt's
# QAT quantizes their input.
_FIXED_OUTPUT = {"softmax": (0.0, 255.0 / 256.0), "sigmoid": (0.0, 255.0 / 256.0), "tanh": (-1.0, 127.0 / 128.0)}


class _Switched:
    """A quantizer that applies `quantizer` when `flag` is 1 and passes the tensor through when it is 0."""

    def __init__(self, quantizer, flag):
        self.quantizer = quantizer
        self.flag = flag

    def __call__(self, inputs, training, weights):
        quantized = self.quantizer(inputs, training, weights)
        return ops.where(ops.convert_to_tensor(self.flag) > 0, quantized, inputs)

    def __getattr__(self, name):  # update_range, assign_range, training_weight ... of the real quantizer
        if name == "quantizer":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.quantizer, name)


class Unit:
    """One switchable part of the QAT model: a row of the report (a wrapped layer or an operation's range) or the
    model's input quantizers."""

    def __init__(self, name, layer_class, layers, is_row):
        self.name = name
        self.layer_class = layer_class
        self.layers = layers  # the QAT layers whose quantizers it switches
        self.is_row = is_row
        self.flag = keras.Variable(1.0, trainable=False, dtype="float32", name="sensitivity_switch")


def _switch(layer, flag):
    if isinstance(layer, QuantizeLayer):
        layer.quantizer = _Switched(layer.quantizer, flag)
        return
    layer._weights_and_quantizers = [(v, _Switched(q, flag)) for v, q in layer._weights_and_quantizers]
    if layer._activation_quantizer is not None:
        layer._activation_quantizer = _Switched(layer._activation_quantizer, flag)
    layer._output_quantizers = [_Switched(q, flag) for q in layer._output_quantizers]
    layer._internal_quantizers = [(n, _Switched(q, flag), s) for n, q, s in layer._internal_quantizers]


def _is_input_quantizer(layer, model):
    try:
        source = layer.input
    except (AttributeError, ValueError):
        source = None
    if any(source is t for t in model.inputs):
        return True
    return isinstance(model, keras.Sequential) and model.layers and model.layers[0] is layer


def switchable_copy(qat):
    """A copy of the QAT model `qat` with switchable quantizers, and its `Unit`s (rows first, in graph order).

    Dropout and noise layers of the copy are turned off (rate 0), so that its calibration pass in training mode
    computes what inference computes.
    """
    work = rewrite_model(qat, copy_layer)
    rows, inputs = [], []
    for layer in walk_layers(work):
        if isinstance(layer, _NOISE):
            layer.rate = 0.0
        elif isinstance(layer, keras.layers.GaussianNoise):
            layer.stddev = 0.0
        if isinstance(layer, QuantizeWrapper):
            rows.append(Unit(layer.layer.name, type(layer.layer).__name__, [layer], True))
        elif isinstance(layer, QuantizeLayer):
            if _is_input_quantizer(layer, work):
                inputs.append(layer)
            else:  # the range kopt puts after a plain operation (`x + y`) or a Lambda
                name = layer.name[len("quant_"):] if layer.name.startswith("quant_") else layer.name
                rows.append(Unit(name, "operation", [layer], True))
    units = rows + ([Unit("(model inputs)", "input", inputs, False)] if inputs else [])
    for unit in units:
        for layer in unit.layers:
            _switch(layer, unit.flag)
    return work, units


def set_flags(units, on):
    """Sets each unit's flag: `on(unit)` True -> quantized."""
    for unit in units:
        unit.flag.assign(1.0 if on(unit) else 0.0)


def activation_states(layer):
    """`{name: {"min": variable, "max": variable[, "seen": variable]}}` of the activation quantizers of a QAT layer
    (its weight quantizers' ranges left out)."""
    weights = set()
    if isinstance(layer, QuantizeWrapper):
        weights = {relative_path(layer.layer, v).replace("/", "_") for v, _ in layer._weights_and_quantizers}
    found = {}
    for variable in layer.weights:
        name = variable.path.rsplit("/", 1)[-1]
        for field in ("min", "max", "seen"):
            if name.endswith("_" + field) and len(variable.shape) == 0:
                found.setdefault(name[: -len(field) - 1], {})[field] = variable
    return {k: v for k, v in found.items() if "min" in v and "max" in v and k not in weights}


@contextlib.contextmanager
def recording(units):
    """Within the block, eager calls of the units' layers record the min/max of their outputs in the dict yielded."""
    ranges = {}
    patched = []
    for unit in units:
        if not unit.is_row:
            continue
        for layer in unit.layers:
            call = layer.call

            def recorded(*args, _call=call, _name=unit.name, **kwargs):
                outputs = _call(*args, **kwargs)
                for tensor in keras.tree.flatten(outputs):
                    if keras.backend.is_float_dtype(tensor.dtype):
                        low, high = float(ops.min(tensor)), float(ops.max(tensor))
                        old = ranges.get(_name, (np.inf, -np.inf))
                        ranges[_name] = (min(old[0], low), max(old[1], high))
                return outputs

            layer.call = recorded
            patched.append(layer)
    try:
        yield ranges
    finally:
        for layer in patched:
            del layer.call


def calibrate(work, units, batches):
    """Sets every activation range of `work` to the min/max of its tensor over `batches`, as TFLite's calibration
    does for post-training int8: the model runs float (every flag 0) in training mode, one batch at a time, each
    batch's range is recorded, and their union is assigned at the end."""
    set_flags(units, lambda unit: False)
    states = [s for unit in units for layer in unit.layers for s in activation_states(layer).values()]
    union = [[np.inf, -np.inf] for _ in states]
    for batch in batches:
        for state in states:
            if "seen" in state:
                state["seen"].assign(0.0)  # the batch sets the range directly (ActivationQuantizer)
        work(batch, training=True)
        for kept, state in zip(union, states):
            kept[0] = min(kept[0], float(ops.convert_to_numpy(state["min"])))
            kept[1] = max(kept[1], float(ops.convert_to_numpy(state["max"])))
    for (low, high), state in zip(union, states):
        state["min"].assign(low)
        state["max"].assign(high)
        if "seen" in state:
            state["seen"].assign(1.0)


def quantizer_range(unit):
    """The range the unit's output is quantized with: `(min, max)` of its last activation/output quantizer, or
    None when it has none of its own (a Conv2D whose ReLU TFLite fuses: the ReLU's range applies)."""
    layer = unit.layers[-1]
    if isinstance(layer, QuantizeWrapper) and not layer.quantize_output:
        return None
    activation = getattr(getattr(layer, "activation", None), "__name__", None)
    if isinstance(layer, QuantizeWrapper) and activation in _FIXED_OUTPUT:
        return _FIXED_OUTPUT[activation]  # its range quantizes the activation's input
    states = activation_states(layer)
    for name in ("output_0", "activation", "input"):
        if name in states:
            return (float(ops.convert_to_numpy(states[name]["min"])), float(ops.convert_to_numpy(states[name]["max"])))
    named = [k for k in states if k.startswith("output")]
    if named:
        return (float(ops.convert_to_numpy(states[named[0]]["min"])),
                float(ops.convert_to_numpy(states[named[0]]["max"])))
    return None
