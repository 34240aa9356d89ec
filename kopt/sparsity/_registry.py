"""Which weights of which Keras layer class are pruned (tfmot's `prune_registry`, for Keras 3)."""

import keras

from kopt._keras.clone import is_graph_model
from kopt._keras.sublayers import is_keras_layer, relative_path, sublayers
from kopt.sparsity.prunable_layer import PrunableLayer

L = keras.layers

# Layer class -> attributes holding the prunable weights. Biases, norms and
# attention scales are left dense, as in tfmot.
_ATTRIBUTES = (
    ((L.Dense, L.EinsumDense), ("kernel",)),
    ((L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose), ("kernel",)),
    ((L.DepthwiseConv1D, L.DepthwiseConv2D), ("kernel",)),
    ((L.SeparableConv1D, L.SeparableConv2D), ("pointwise_kernel",)),
    ((L.Embedding,), ("embeddings",)),
)

# Layers whose kernels tfmot deliberately leaves dense (its registry lists DepthwiseConv2D with
# no weights): one 3x3 filter per channel has too few weights to lose. kopt prunes them only on
# request: a layer wrapped explicitly, or `prune_low_magnitude(..., prune_depthwise=True)`.
DEPTHWISE_LAYERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)

_MHA_SUBLAYERS = ("query_dense", "key_dense", "value_dense", "output_dense")

# Recurrent layers (LSTM, GRU, SimpleRNN and `keras.layers.RNN`, whose cell may be a
# StackedRNNCells) are pruned through their cells, as in tfmot: the input kernel and the
# recurrent kernel of each cell. Other cells must be PrunableLayers.
_RNN_CELLS = (L.LSTMCell, L.GRUCell, L.SimpleRNNCell)
_RNN_CELL_ATTRIBUTES = ("kernel", "recurrent_kernel")

SUPPORTED_LAYERS = (
    tuple(cls for classes, _ in _ATTRIBUTES for cls in classes)
    + (L.MultiHeadAttention, L.LSTM, L.GRU, L.SimpleRNN, L.RNN)
)


def _defines_prunable_weights(layer):
    return isinstance(layer, PrunableLayer) or callable(getattr(layer, "get_prunable_weights", None))


def _rnn_cells(layer):
    cell = layer.cell
    return list(cell.cells) if isinstance(cell, L.StackedRNNCells) else [cell]


def _is_prunable_cell(cell):
    return _defines_prunable_weights(cell) or isinstance(cell, _RNN_CELLS)


def _is_builtin_prunable(layer):
    if _defines_prunable_weights(layer):
        return True
    if isinstance(layer, L.RNN):
        return all(_is_prunable_cell(cell) for cell in _rnn_cells(layer))
    return isinstance(layer, SUPPORTED_LAYERS)


def _may_hold_sublayers(layer):
    # Keras's own layers are pruned as a whole or not at all (tfmot prunes no Bidirectional, TimeDistributed ...);
    # wrappers (kopt's included) and Sequential/Functional models are handled by the model rewrite. A subclassed
    # model is a custom layer.
    return not (is_keras_layer(layer) or is_graph_model(layer) or isinstance(layer, L.Wrapper))


def _sublayer_weights(layer):
    """`[(variable, label)]` of the prunable sublayers of a custom layer, at any depth, labelled by path."""
    found, seen = [], set()

    def visit(container):
        for sub in sublayers(container):
            if _is_builtin_prunable(sub):
                if not sub.built or not is_pruned_by_default(sub):
                    continue
                for variable, _ in labelled_prunable_weights(sub):
                    if id(variable) not in seen:
                        seen.add(id(variable))
                        found.append((variable, path_label(layer, variable)))
            elif not isinstance(sub, L.Wrapper):
                visit(sub)

    visit(layer)
    return found


def prunes_sublayers(layer):
    """Whether `layer` is a custom layer pruned through the Dense, EinsumDense, Conv*, Embedding ... it holds.

    KerasHub's TransformerEncoder, CachedMultiHeadAttention or ViTPatchingAndEmbedding, or any custom layer
    that assigns Keras layers to its attributes: their kernels are pruned as if each sublayer were wrapped
    (the same weights, one mask per weight), unless the layer says what to prune itself with
    `get_prunable_weights`. DepthwiseConv kernels inside stay dense, as in a model.
    """
    return (not _is_builtin_prunable(layer) and _may_hold_sublayers(layer) and layer.built
            and bool(_sublayer_weights(layer)))


def is_prunable(layer):
    """Whether `layer` is a built-in prunable layer, opts in with `get_prunable_weights`, or holds prunable layers.

    A recurrent layer (`keras.layers.RNN` and its subclasses LSTM, GRU,
    SimpleRNN) is prunable when every one of its cells is an LSTMCell, GRUCell,
    SimpleRNNCell or defines `get_prunable_weights`, as in tfmot. (ConvLSTM and
    Bidirectional are not prunable: tfmot does not prune them either.) A
    built custom layer is prunable through its sublayers (`prunes_sublayers`).
    """
    return _is_builtin_prunable(layer) or prunes_sublayers(layer)


def is_pruned_by_default(layer):
    """Whether pruning a whole model (or a list of layers) prunes `layer`.

    False for DepthwiseConv1D/2D (tfmot leaves their kernels dense), unless the
    layer says what to prune with its own `get_prunable_weights`; True for every
    other prunable layer.
    """
    return is_prunable(layer) and (_defines_prunable_weights(layer) or not isinstance(layer, DEPTHWISE_LAYERS))


def _as_variable(layer, value, attribute):
    if not isinstance(value, keras.Variable):
        raise ValueError(
            f"Layer '{layer.name}' ({layer.__class__.__name__}): `{attribute}` is not a plain variable "
            f"(got {type(value).__name__}); LoRA-enabled or already-quantized layers cannot be pruned. "
            "Prune before calling enable_lora()/quantize()."
        )
    return value


def path_label(layer, weight):
    """A custom layer's weight named by its path below `layer` ('kernel', 'inner/kernel'), else its name."""
    return relative_path(layer, weight)


def _rnn_weights(layer):
    # Named like tfmot's variables, from the cells' names (kept by get_config), not from variable
    # paths, which depend on how the layer was built: 'lstm_cell/kernel' for an LSTM,
    # 'stacked_rnn_cells/lstm_cell/kernel' for the first cell of RNN([LSTMCell(..), GRUCell(..)]).
    prefix = f"{layer.cell.name}/" if isinstance(layer.cell, L.StackedRNNCells) else ""
    weights = []
    for cell in _rnn_cells(layer):
        if _defines_prunable_weights(cell):
            weights.extend((w, f"{prefix}{cell.name}/{path_label(cell, w)}") for w in cell.get_prunable_weights())
        else:
            weights.extend(
                (_as_variable(layer, getattr(cell, a), f"{cell.name}.{a}"), f"{prefix}{cell.name}/{a}")
                for a in _RNN_CELL_ATTRIBUTES
            )
    return weights


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
    if _defines_prunable_weights(layer):
        return [(w, path_label(layer, w)) for w in layer.get_prunable_weights()]
    if isinstance(layer, L.MultiHeadAttention):
        sublayers = [getattr(layer, name) for name in _MHA_SUBLAYERS]
        return [(_as_variable(layer, s.kernel, f"{s.name}.kernel"), f"{s.name}/kernel") for s in sublayers]
    if isinstance(layer, L.RNN) and is_prunable(layer):
        return _rnn_weights(layer)
    for classes, attributes in _ATTRIBUTES:
        if isinstance(layer, classes):
            return [(_as_variable(layer, getattr(layer, a), a), a) for a in attributes]
    if prunes_sublayers(layer):
        return _sublayer_weights(layer)
    raise ValueError(f"Layer '{layer.name}' ({layer.__class__.__name__}) is not prunable.")


def get_prunable_weights(layer):
    """Returns the list of variables of `layer` that pruning masks.

    Args:
        layer: a built Keras layer for which `is_prunable(layer)` is True.

    Returns:
        A list of `keras.Variable`s: e.g. `[kernel]` for a Dense,
        `[kernel, recurrent_kernel]` for an LSTM (per cell for a stacked RNN).
    """
    return [variable for variable, _ in labelled_prunable_weights(layer)]
