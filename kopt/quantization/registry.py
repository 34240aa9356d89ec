"""The default 8-bit scheme: what TFLite's int8 kernels expect, layer class by layer class."""

import keras

from kopt.quantization.quantize_config import Default8BitQuantizeConfig

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
    L.Rescaling, L.Normalization, L.BatchNormalization, L.LeakyReLU, L.PReLU,
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
        KeyError: if the default scheme does not know the layer.
    """
    if isinstance(layer, PASS_THROUGH):
        return None
    for classes, kwargs in _WEIGHTED:
        if isinstance(layer, classes):
            return Default8BitQuantizeConfig(**kwargs, quantize_activation=True)
    if isinstance(layer, L.Activation):
        return Default8BitQuantizeConfig(quantize_activation=True)
    if isinstance(layer, OUTPUT_QUANTIZED):
        return Default8BitQuantizeConfig(quantize_output=True)
    raise KeyError(type(layer).__name__)


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
