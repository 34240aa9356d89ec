"""`SublayerQuantizeConfig`: quantizing a custom layer through the Keras layers it holds."""

import keras

from kopt._keras.clone import is_graph_model
from kopt._keras.sublayers import all_sublayers, is_keras_layer, sublayers
from kopt.quantization.quantize_config import QuantizeConfig
from kopt.quantization.quantizers import ActivationQuantizer


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
        from kopt.quantization._registry import default_config

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
    from kopt.quantization._registry import default_config

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
