"""Which weights of which Keras layer class are pruned (tfmot's `prune_registry`, for Keras 3).

The table is shared with clustering (`kopt._keras.kernels`); pruning's opt-in is `get_prunable_weights`
(a `PrunableLayer`, or any layer with that method, as in tfmot).
"""

from kopt._keras.kernels import DEPTHWISE_LAYERS, SUPPORTED_LAYERS, KernelRegistry, path_label
from kopt.sparsity.prunable_layer import PrunableLayer

__all__ = ["DEPTHWISE_LAYERS", "SUPPORTED_LAYERS", "get_prunable_weights", "is_prunable", "is_pruned_by_default",
           "labelled_prunable_weights", "prunes_sublayers"]


def _opts_in(layer):
    return isinstance(layer, PrunableLayer) or callable(getattr(layer, "get_prunable_weights", None))


def _own_prunable_weights(layer):
    return [(w, path_label(layer, w)) for w in layer.get_prunable_weights()]


_REGISTRY = KernelRegistry(_opts_in, _own_prunable_weights, "pruned")


def prunes_sublayers(layer):
    """Whether `layer` is a custom layer pruned through the Dense, EinsumDense, Conv*, Embedding ... it holds.

    KerasHub's TransformerEncoder, CachedMultiHeadAttention or ViTPatchingAndEmbedding, or any custom layer
    that assigns Keras layers to its attributes: their kernels are pruned as if each sublayer were wrapped
    (the same weights, one mask per weight), unless the layer says what to prune itself with
    `get_prunable_weights`. DepthwiseConv kernels inside stay dense, as in a model.
    """
    return _REGISTRY.holds_sublayers(layer)


def is_prunable(layer):
    """Whether `layer` is a built-in prunable layer, opts in with `get_prunable_weights`, or holds prunable layers.

    A recurrent layer (`keras.layers.RNN` and its subclasses LSTM, GRU,
    SimpleRNN) is prunable when every one of its cells is an LSTMCell, GRUCell,
    SimpleRNNCell or defines `get_prunable_weights`, as in tfmot. (ConvLSTM and
    Bidirectional are not prunable: tfmot does not prune them either.) A
    built custom layer is prunable through its sublayers (`prunes_sublayers`).
    """
    return _REGISTRY.is_supported(layer)


def is_pruned_by_default(layer):
    """Whether pruning a whole model (or a list of layers) prunes `layer`.

    False for DepthwiseConv1D/2D (tfmot leaves their kernels dense), unless the
    layer says what to prune with its own `get_prunable_weights`; True for every
    other prunable layer.
    """
    return _REGISTRY.is_used_by_default(layer)


def labelled_prunable_weights(layer):
    """Returns `[(variable, label)]` for the variables of `layer` that pruning masks.

    The label names the weight within the layer, independently of how the
    layer was built: 'kernel' (Dense), 'query/kernel' (MultiHeadAttention),
    'lstm_cell/recurrent_kernel' (LSTM), the path below the layer for a custom
    layer's weights ('self_attention_layer/query/kernel' in a KerasHub
    TransformerEncoder).

    Args:
        layer: a built Keras layer for which `is_prunable(layer)` is True.

    Returns:
        A list of `(keras.Variable, str)`.
    """
    return _REGISTRY.labelled_weights(layer)


def get_prunable_weights(layer):
    """Returns the list of variables of `layer` that pruning masks.

    Args:
        layer: a built Keras layer for which `is_prunable(layer)` is True.

    Returns:
        A list of `keras.Variable`s: e.g. `[kernel]` for a Dense,
        `[kernel, recurrent_kernel]` for an LSTM (per cell for a stacked RNN).
    """
    return [variable for variable, _ in labelled_prunable_weights(layer)]
