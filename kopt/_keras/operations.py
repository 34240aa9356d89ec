"""Telling apart the plain operations (`x + y`, `keras.ops.*`) of a Keras 3 Functional graph.

Keras exposes its operations as functions only (`keras.ops.reshape`); the `Operation` classes that
a Functional graph records for them live in `keras.src.ops`, so they are imported here, once.
"""

from keras.src.ops import nn as _nn  # private: the classes behind keras.ops.* (no public alias)
from keras.src.ops import numpy as _numpy

# Operations that move or select values without changing them: a quantized input stays quantized
# with the same scale (TFLite's RESHAPE, TRANSPOSE, SQUEEZE ... keep their input's quantization).
_SHAPE_OPERATIONS = tuple(
    getattr(_numpy, name) for name in (
        "Reshape", "Transpose", "Squeeze", "ExpandDims", "Ravel", "Flip", "Take", "Tile", "Repeat",
        "GetItem", "BroadcastTo", "Split",
    ) if hasattr(_numpy, name)
)


def is_shape_operation(operation):
    """Whether a plain graph operation only moves values (reshape, transpose, slicing ...)."""
    return isinstance(operation, _SHAPE_OPERATIONS)


def _classes(module, names):
    return tuple(getattr(module, name) for name in names if hasattr(module, name))


# Element-wise operations: output channel c depends on input channel c only (inputs broadcast).
_ELEMENTWISE = _classes(_numpy, (
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power", "Sqrt", "Abs", "Negative",
    "Square", "Exp", "Log", "Tanh", "Clip", "Sign", "Reciprocal", "Rsqrt")) + _classes(_nn, (
    "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "Silu", "Gelu", "Elu", "Selu", "LeakyRelu", "Softplus",
    "Softsign", "Tanh", "HardTanh", "Mish"))


def is_elementwise_operation(operation):
    """Whether a plain graph operation computes each element from the same element of its (broadcast) inputs."""
    return isinstance(operation, _ELEMENTWISE)


# `x + y`, `x - y`, `x * y` (keras.ops.add/subtract/multiply): what XNNPACK's sparse inference accepts between layers.
_ADD_SUBTRACT_MULTIPLY = _classes(_numpy, ("Add", "Subtract", "Multiply"))


def is_add_subtract_or_multiply(operation):
    """Whether a plain graph operation is `x + y`, `x - y` or `x * y` (keras.ops.add, subtract, multiply)."""
    return isinstance(operation, _ADD_SUBTRACT_MULTIPLY)
