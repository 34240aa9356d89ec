"""Making a Keras 3 model traceable into a graph tf2onnx converts (for `model.export(format="onnx")`).

Three things a Keras model does on the TensorFlow backend end up in a traced graph in a form tf2onnx cannot
convert; within `traceable_for_tf2onnx` they are changed for the layers of the model, and restored after.
None changes what the model computes (beyond float rounding).

- Keras's `Normalization` layer keeps its `mean` and `variance` as plain tensors (computed from its weights
  in `build`/`finalize_state`; undocumented attributes, read here because nothing public reaches them), and
  so do custom layers (KerasHub's `ViTPatchingAndEmbedding` its `position_ids`). A traced function captures
  such tensors as inputs, and tf2onnx leaves them as extra ONNX graph inputs (e.g.
  `normalization_1/Sub/y:0`) that onnxruntime then demands: every keras.applications EfficientNet has such a
  layer. Every tensor attribute of every layer (not a variable) is held as a NumPy array for the trace, and
  embedded in the graph as a constant.
- A grouped convolution (`Conv2D(groups > 1)`, e.g. ConvNeXt's depthwise convolutions) runs, on the
  TensorFlow backend, inside a `tf.function(jit_compile=True)` (Keras works around grouped convolutions that
  TensorFlow's CPU kernels lack). tf2onnx does not inline that call and leaves a `StatefulPartitionedCall`
  node that no ONNX runtime has. `convolution_op`, the override point Keras's convolution layers provide, is
  set to a plain `tf.nn.convolution` for the trace: tf2onnx converts it to an ONNX Conv with `group`.
- The exact GELU (`activation="gelu"`, e.g. in ConvNeXt) is `0.5 x erfc(-x / sqrt(2))` in TensorFlow, and
  tf2onnx 1.17 has no Erfc (ONNX's own Gelu op comes with opset 20, beyond tf2onnx). A layer's `activation`
  that is `keras.activations.gelu` is set to the same function written with Erf, `0.5 x (1 + erf(x /
  sqrt(2)))`, which differs by float rounding (below 1e-7 absolute).
"""

import contextlib

import keras

from kopt._keras.sublayers import all_sublayers

_TENSOR_ATTRIBUTES = {keras.layers.Normalization: ("mean", "variance")}
_GROUPED = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _layers(model):
    """Every layer of `model`: nested models, the layers inside wrappers (QAT wrappers) and inside custom layers."""
    return all_sublayers(model)


def _is_plain_tensor(value):
    return value is not None and not isinstance(value, keras.Variable) and keras.ops.is_tensor(value)


def _plain_convolution(layer):
    import tensorflow as tf

    data_format = None if layer.data_format == "channels_last" else "NC" + "DHW"[3 - layer.rank:]

    def convolution_op(inputs, kernel):
        return tf.nn.convolution(inputs, kernel, list(layer.strides), layer.padding.upper(),
                                 data_format=data_format, dilations=list(layer.dilation_rate))

    return convolution_op


def _gelu_with_erf(x, approximate=False):
    if approximate:
        return keras.activations.gelu(x, approximate=True)
    return 0.5 * x * (1.0 + keras.ops.erf(x * 0.7071067811865476))


_gelu_with_erf.__name__ = "gelu"  # what kopt's QAT wrapper reads to choose how to quantize around it


@contextlib.contextmanager
def traceable_for_tf2onnx(model):
    """Within the block, `model`'s Normalization tensors are NumPy arrays, grouped convolutions plain, GELUs Erf.

    Args:
        model: a Keras model (nested models and wrapped layers are walked).
    """
    saved, overridden = [], []
    try:
        for layer in _layers(model):
            names = set(_TENSOR_ATTRIBUTES.get(type(layer), ()))
            names.update(name for name, value in vars(layer).items() if _is_plain_tensor(value))
            for name in sorted(names):
                value = getattr(layer, name, None)
                if not _is_plain_tensor(value):
                    continue
                saved.append((layer, name, value))
                setattr(layer, name, keras.ops.convert_to_numpy(value))
            if getattr(layer, "activation", None) is keras.activations.gelu:
                saved.append((layer, "activation", layer.activation))
                layer.activation = _gelu_with_erf
            if (isinstance(layer, _GROUPED) and getattr(layer, "groups", 1) > 1
                    and layer.padding in ("valid", "same") and "convolution_op" not in vars(layer)):
                layer.convolution_op = _plain_convolution(layer)
                overridden.append(layer)
        yield
    finally:
        for layer, name, value in reversed(saved):
            setattr(layer, name, value)
        for layer in overridden:
            del layer.convolution_op
