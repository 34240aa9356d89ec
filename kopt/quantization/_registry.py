"""The default 8-bit scheme: what TFLite's int8 kernels expect, layer class by layer class."""

import keras

from kopt.quantization.quantize_config import Default8BitQuantizeConfig
from kopt.quantization.internal_ranges import InternalRangesQuantizeConfig, quantized_internals
from kopt.quantization.sublayer_config import SublayerQuantizeConfig, quantizes_sublayers

L = keras.layers

# Weights: symmetric, narrow range; per channel for convolutions, per tensor for Dense and transposed
# convolutions (per-channel kernels there make the converter fail: 'tfl.transpose' op has mismatched
# quantized axes).
_WEIGHTED = (
    ((L.Dense, L.EinsumDense), dict(weight_attrs=["kernel"], per_axis=False)),
    ((L.Conv2D,), dict(weight_attrs=["kernel"], per_axis=True, axis=-1)),
    # Conv3D is left out: TFLite has no int8 CONV_3D kernel (it stays float; use float_layers).
    ((L.DepthwiseConv2D,), dict(weight_attrs=["kernel"], per_axis=True, axis=-2)),
    # 1-D kernels are expanded to 2-D by the converter (ExpandDims/Reshape), which moves the quantized
    # channel axis and fails ("'tfl.reshape' op requires ... cast compatible"): per tensor.
    ((L.Conv1D, L.DepthwiseConv1D), dict(weight_attrs=["kernel"], per_axis=False)),
    ((L.Conv1DTranspose, L.Conv2DTranspose), dict(weight_attrs=["kernel"], per_axis=False)),
)

# Layers whose output gets its own range (TFLite requantizes there).
OUTPUT_QUANTIZED = (
    L.ReLU, L.Activation, L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D,
    L.Rescaling, L.Normalization, L.BatchNormalization, L.LeakyReLU, L.PReLU, L.LayerNormalization,
)

# Layers with no int8 TFLite kernel whose weights QAT would have to simulate: quantize_apply names them
# and points to `float_layers`. Any other layer the scheme does not know (custom layers, Lambda, plain
# operations) gets its output quantized; what it computes inside is left to the converter.
UNSUPPORTED = (
    L.Conv3D, L.Conv3DTranspose, L.RNN, L.LSTM, L.GRU, L.SimpleRNN,
    L.Bidirectional, L.ConvLSTM1D, L.ConvLSTM2D, L.ConvLSTM3D,
    L.Wrapper,  # TimeDistributed, pruning wrappers ...: the wrapped layer's weights would go unquantized
)

# Layers that move or select values without changing their scale: left as they are.
PASS_THROUGH = (
    L.InputLayer, L.Reshape, L.Flatten, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise,
    L.GaussianDropout, L.AlphaDropout, L.Identity, L.Permute, L.MaxPooling1D, L.MaxPooling2D,
    L.AveragePooling1D, L.AveragePooling2D, L.UpSampling1D, L.UpSampling2D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.Cropping1D, L.Cropping2D, L.Softmax, L.RepeatVector,
)

# Activation layers that TFLite fuses into the op before them: that op's output is not quantized.
FUSABLE_ACTIVATIONS = ("relu", "relu6")


# Split into DepthwiseConv + 1x1 Conv by quantize_apply (see transforms.split_separable).
SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)


def default_config(layer):
    """Returns the default `QuantizeConfig` for `layer`, `None` for pass-through layers.

    Raises:
        KeyError: for the `UNSUPPORTED` layers (no int8 TFLite kernel).
    """
    if isinstance(layer, PASS_THROUGH):
        return None
    if isinstance(layer, UNSUPPORTED):
        raise KeyError(type(layer).__name__)
    if isinstance(layer, L.DepthwiseConv2D) and layer.depth_multiplier > 1:
        # TFLite's int8 depthwise kernel has one scale per output channel (channels x multiplier), not
        # per input channel: per tensor is what converts.
        return Default8BitQuantizeConfig(["kernel"], ["activation"], False)
    for classes, kwargs in _WEIGHTED:
        if isinstance(layer, classes):
            return Default8BitQuantizeConfig(**kwargs, activation_attrs=["activation"], quantize_output=False)
    if isinstance(layer, L.Activation):
        return Default8BitQuantizeConfig([], ["activation"], False)
    if isinstance(layer, L.Embedding):
        # An int8 table, symmetric per tensor: TFLite's GATHER keeps its scale, so the output needs no range of
        # its own, and a pruned table keeps its zeros through QAT (preserve_sparsity masks quantized weights).
        return Default8BitQuantizeConfig(["embeddings"], [], False)
    if quantized_internals(layer):
        return InternalRangesQuantizeConfig()  # its output and the tensors inside it (IntegerLayerNormalization)
    if isinstance(layer, L.MultiHeadAttention) or quantizes_sublayers(layer):
        return SublayerQuantizeConfig()  # the kernels of the layers it holds, and its output
    return Default8BitQuantizeConfig([], [], True)  # OUTPUT_QUANTIZED, other custom layers


def is_opaque(layer):
    """Whether the scheme knows nothing of `layer` but its output: a custom layer (or one of Keras's that is no
    layer class of its own, as InceptionResNetV2's scaling layer) whose call the converter sees as plain ops."""
    known = (PASS_THROUGH + OUTPUT_QUANTIZED + UNSUPPORTED + SEPARABLE
             + tuple(cls for classes, _ in _WEIGHTED for cls in classes)
             + (L.Activation, L.Embedding, L.MultiHeadAttention, L.InputLayer, keras.Model))
    return not isinstance(layer, known) and not quantized_internals(layer) and not quantizes_sublayers(layer)


def is_supported(layer):
    if isinstance(layer, SEPARABLE):
        return True
    try:
        default_config(layer)
        return True
    except KeyError:
        return False


def is_fusable_activation(layer):
    """Whether `layer` is a ReLU/ReLU6 layer that TFLite fuses into the preceding op."""
    if isinstance(layer, L.ReLU):
        return (layer.negative_slope == 0 and layer.threshold == 0
                and layer.max_value in (None, 6.0, 6))
    if isinstance(layer, L.Activation):
        return getattr(layer.activation, "__name__", "") in FUSABLE_ACTIVATIONS
    return False
