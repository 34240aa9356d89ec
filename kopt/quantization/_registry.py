"""The default 8-bit scheme: what TFLite's int8 kernels expect, layer class by layer class.

It includes `SublayerQuantizeConfig`, the config of a custom layer quantized through the Keras layers it holds:
that config asks the scheme for each sublayer's config, and the scheme gives it to custom layers, so the two live
in one module (apart, they imported each other).
"""

import keras

from kopt._keras.clone import is_graph_model
from kopt._keras.sublayers import all_sublayers, is_keras_layer, sublayers
from kopt.quantization.quantize_config import Default8BitQuantizeConfig, QuantizeConfig
from kopt.quantization.internal_ranges import InternalRangesQuantizeConfig, quantized_internals
from kopt.quantization.quantizers import ActivationQuantizer

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


def _weighted_sublayers(layer, default_config):
    """`[(sublayer, config)]` for the built sublayers of `layer` (any depth) whose default config quantizes weights."""
    found, seen = [], set()

    def visit(container):
        for sub in sublayers(container):
            if id(sub) in seen or not sub.built:
                continue
            seen.add(id(sub))
            try:
                config = default_config(sub)
            except KeyError:  # no int8 kernel for it (an RNN ...): left float
                continue
            if config is not None and config.get_weights_and_quantizers(sub):
                found.append((sub, config))
            elif not isinstance(sub, (keras.Model, keras.layers.Wrapper)) or not is_keras_layer(sub):
                visit(sub)

    visit(layer)
    return found


@keras.saving.register_keras_serializable(package="kopt")
class SublayerQuantizeConfig(QuantizeConfig):
    """The default int8 scheme for a custom layer that holds Keras layers (KerasHub's blocks, your own).

    The kernels of the Dense, EinsumDense, Conv* ... layers it holds as
    attributes (at any depth) are fake-quantized as the default scheme
    quantizes those layers at the top level (per tensor for Dense and
    EinsumDense, per channel for Conv2D and DepthwiseConv2D), and the layer's
    output gets an asymmetric 8-bit range. What the layer computes between its
    sublayers (attention scores, residual adds) has no range of its own: the
    converter calibrates those tensors on `representative_data`.

    `quantize_apply` uses it for every custom layer it finds such sublayers
    in; write a `QuantizeConfig` for the layer to quantize it otherwise.

    Example:

    ```python
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = keras.layers.Dense(8)

        def build(self, input_shape):
            self.inner.build(input_shape)

        def call(self, x):
            return x + self.inner(x)

    block = Block()
    block.build((None, 8))
    config = kopt.quantization.SublayerQuantizeConfig()
    assert [v.path for v, _ in config.get_weights_and_quantizers(block)] == [block.inner.kernel.path]
    ```
    """

    def get_weights_and_quantizers(self, layer):
        return [pair for sub, config in _weighted_sublayers(layer, default_config)
                for pair in config.get_weights_and_quantizers(sub)]

    def prepare(self, layer):
        freeze_batch_normalization(layer)

    def get_activations_and_quantizers(self, layer):
        return []

    def get_output_quantizers(self, layer):
        return [ActivationQuantizer()]

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(self) is type(other)

    __hash__ = object.__hash__


def quantizes_sublayers(layer):
    """Whether `layer` is a custom layer that holds layers whose weights the default scheme quantizes."""
    if is_keras_layer(layer) or is_graph_model(layer) or isinstance(layer, keras.layers.Wrapper) or not layer.built:
        return False
    return bool(_weighted_sublayers(layer, default_config))


def freeze_batch_normalization(layer):
    """Makes the BatchNormalization layers inside `layer` normalize with their moving statistics, in training too.

    QAT learns output ranges in training. A BatchNormalization that normalizes each training batch by its own
    statistics gives other values than in inference, where it uses its moving statistics: the ranges learned do
    not fit the file (a briefly trained KerasHub MobileNet's QAT file disagreed with its model at -11 dB; its
    blocks hold their BatchNormalization layers). Frozen (`trainable=False`, which Keras 3 runs in inference mode),
    they compute in training what the file computes, as the BatchNormalization layers QAT folds into a model's
    convolutions do.
    """
    for sub in all_sublayers(layer):
        if isinstance(sub, keras.layers.BatchNormalization):
            sub.trainable = False


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
