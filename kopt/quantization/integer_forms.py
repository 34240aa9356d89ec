"""Integer-friendly forms of layers whose TFLite lowering keeps float ops.

`integer_form(layer)` returns an equivalent layer (same weights, same outputs up to float rounding)
that lowers to int8 TFLite ops, or None; QAT (`quantize_apply`) and post-training conversion use it.

- Keras 3 computes `LayerNormalization` with `ops.layer_normalization`, which TFLite lowers with a
  NEG that has no int8 kernel: a full-int8 file then keeps DEQUANTIZE -> NEG -> QUANTIZE. The same
  math written as `(x - mean) * rsqrt(var + eps) * gamma + beta` lowers to SUB, MUL, MEAN, ADD and
  RSQRT, all of which have int8 kernels.
- A `Dense` on a rank-3/4 input is computed with tensordot and a separate bias ADD; it is the 1x1
  convolution that TFLite runs as one op.
"""

import contextlib
import types

import keras
from keras import ops

from kopt._keras.sublayers import all_sublayers


@keras.saving.register_keras_serializable(package="kopt")
class IntegerLayerNormalization(keras.layers.LayerNormalization):
    """`LayerNormalization` computed as `(x - mean) * rsqrt(var + eps) * gamma + beta` (no NEG op).

    Same arguments, weights and outputs as `keras.layers.LayerNormalization` (last-axis normalization,
    no `rms_scaling`); only the lowering differs, so that TFLite can run it in int8.

    Example:

    ```python
    layer = kopt.quantization.IntegerLayerNormalization()
    y = layer(np.random.rand(2, 8).astype("float32"))
    ```
    """

    @property
    def quantized_internals(self):
        """The tensors of `call` that the int8 file keeps, in order (QAT learns a range for each)."""
        names = ["mean", "centered", "squared", "variance", "variance_epsilon", "inverse_std"]
        if self.scale or self.center:
            names.append("normalized")
        if self.scale and self.center:
            names.append("scaled")
        return tuple(names)

    def call(self, inputs, quantize_internals=None):
        """Args: inputs; quantize_internals: optional `(name, tensor) -> tensor` for the QAT ranges."""
        q = quantize_internals or (lambda name, tensor: tensor)
        x = ops.cast(inputs, self.compute_dtype)
        axis = self.axis
        mean = q("mean", ops.mean(x, axis=axis, keepdims=True))
        centered = q("centered", x - mean)
        squared = q("squared", centered * centered)  # MUL: SQUARE has no int8 kernel
        variance = q("variance", ops.mean(squared, axis=axis, keepdims=True))
        inverse_std = q("inverse_std", ops.rsqrt(q("variance_epsilon", variance + self.epsilon)))
        outputs = centered * inverse_std
        if self.scale:
            outputs = q("normalized", outputs) * ops.cast(self.gamma, outputs.dtype)
        if self.center:
            outputs = q("scaled" if self.scale else "normalized", outputs) + ops.cast(self.beta, outputs.dtype)
        return outputs


def _lowers_with_neg(layer):
    return type(layer) is keras.layers.LayerNormalization and not layer.rms_scaling and _last_axis(layer)


def _last_axis(layer):
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    rank = len(layer.get_build_config()["input_shape"]) if layer.built else None
    return rank is not None and len(axis) == 1 and axis[0] % rank == rank - 1


def integer_form(layer):
    """An equivalent layer that TFLite can run in int8, with `layer`'s weights, or None if `layer` needs none.

    Args:
        layer: a built Keras layer.

    Returns:
        A new built layer named like `layer`, or None.

    Example:

    ```python
    layer = keras.layers.LayerNormalization()
    layer.build((None, 8))
    replacement = kopt.quantization.integer_form(layer)  # an IntegerLayerNormalization
    ```
    """
    if _lowers_with_neg(layer):
        new = IntegerLayerNormalization.from_config(layer.get_config())
        new.build_from_config(layer.get_build_config())
        new.set_weights(layer.get_weights())
        return new
    if type(layer) is keras.layers.Dense and layer.built and layer.lora_rank is None:
        return _dense_as_convolution(layer)
    return None


def _dense_as_convolution(dense):
    """A Dense on images / sequences as the 1x1 Conv2D / Conv1D it is (or None for rank-2 inputs).

    On a rank-3/4 input Keras computes Dense with tensordot (RESHAPE, FULLY_CONNECTED, RESHAPE, then
    ADD for the bias), which leaves the product before the bias without a quantization range; the
    equivalent 1x1 convolution is one CONV_2D with the bias fused (ConvNeXt's pointwise layers).
    """
    shape = dense.get_build_config()["input_shape"]
    if len(shape) not in (3, 4) or keras.config.image_data_format() != "channels_last":
        return None
    conv = (keras.layers.Conv2D if len(shape) == 4 else keras.layers.Conv1D)(
        dense.units, 1, activation=dense.activation, use_bias=dense.use_bias, name=dense.name,
        dtype=dense.dtype_policy)
    conv.build(shape)
    kernel = ops.convert_to_numpy(dense.kernel).reshape((1,) * (len(shape) - 2) + tuple(dense.kernel.shape))
    conv.set_weights([kernel] + ([ops.convert_to_numpy(dense.bias)] if dense.use_bias else []))
    return conv


def with_integer_forms(model):
    """`model` with every layer that has an integer form replaced by it (a copy), or `model` if none has.

    `kopt.convert.to_tflite` converts float models this way for post-training int8, so that e.g. a
    ConvNeXt's LayerNormalizations do not leave NEG ops in the file. The copy computes the same
    function; its weights are copies.

    Args:
        model: a Sequential or Functional model.

    Returns:
        A Keras model.

    Example:

    ```python
    model = keras.Sequential([keras.Input((4, 8)), keras.layers.LayerNormalization()])
    rewritten = kopt.quantization.with_integer_forms(model)
    ```
    """
    from kopt._keras.clone import copy_layer, is_graph_model, rewrite_model, walk_layers, with_input_names

    if not is_graph_model(model) or not any(integer_form(layer) is not None for layer in walk_layers(model)):
        return model

    def replace(layer):
        replacement = integer_form(layer)
        return copy_layer(layer) if replacement is None else replacement

    return with_input_names(model, rewrite_model(model, replace))


@contextlib.contextmanager
def integer_lowering(model):
    """Within the block, every LayerNormalization in `model` computes as `IntegerLayerNormalization` does.

    `with_integer_forms` and `quantize_apply` replace the LayerNormalization layers of a model's graph; the
    ones a custom layer holds as attributes (KerasHub's TransformerEncoder, ViT's blocks) cannot be replaced
    without rebuilding that layer, so their `call` is switched for the export instead, and restored after.
    Same weights, same function up to float rounding, no NEG op in the int8 file.

    Args:
        model: a Keras model or layer (nested models, wrapped layers and custom layers' sublayers are walked).

    Example:

    ```python
    model = keras.Sequential([keras.Input((4, 8)), keras.layers.LayerNormalization()])
    with kopt.quantization.integer_lowering(model):
        y = model(np.ones((1, 4, 8), "float32"))
    ```
    """
    patched = []
    try:
        for layer in all_sublayers(model):
            if layer.built and _lowers_with_neg(layer) and "call" not in vars(layer):
                layer.call = types.MethodType(IntegerLayerNormalization.call, layer)
                patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.call
