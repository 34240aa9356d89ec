"""Which weights of which Keras layer a weight-compression technique touches (tfmot's registries, for Keras 3).

Pruning and clustering change the same weights: the kernels of Dense, EinsumDense, Conv*, Conv*Transpose,
SeparableConv* (its pointwise kernel), Embedding, MultiHeadAttention (its four projections) and the
`kernel`/`recurrent_kernel` of each LSTM/GRU/SimpleRNN cell, plus those of the layers a custom layer holds as
attributes (KerasHub's TransformerEncoder). Biases and normalization weights are left alone, and DepthwiseConv
kernels are used only on request (tfmot leaves them dense and unclustered). A `KernelRegistry` holds that table
once; each technique makes one with its own opt-in (`get_prunable_weights`, `get_clusterable_weights`).
"""

import keras

from kopt._keras.clone import is_graph_model
from kopt._keras.sublayers import is_keras_layer, relative_path, sublayers

L = keras.layers

# Layer class -> attributes holding the weights. Biases, norms and attention scales are left alone, as in tfmot.
ATTRIBUTES = (
    ((L.Dense, L.EinsumDense), ("kernel",)),
    ((L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose), ("kernel",)),
    ((L.DepthwiseConv1D, L.DepthwiseConv2D), ("kernel",)),
    ((L.SeparableConv1D, L.SeparableConv2D), ("pointwise_kernel",)),
    ((L.Embedding,), ("embeddings",)),
)

# One 3x3 filter per channel has too few weights to lose: tfmot leaves these kernels dense and unclustered.
DEPTHWISE_LAYERS = (L.DepthwiseConv1D, L.DepthwiseConv2D)

_MHA_SUBLAYERS = ("query_dense", "key_dense", "value_dense", "output_dense")

# Recurrent layers (LSTM, GRU, SimpleRNN and `keras.layers.RNN`, whose cell may be a StackedRNNCells) are
# handled through their cells, as in tfmot: each cell's input kernel and recurrent kernel.
_RNN_CELLS = (L.LSTMCell, L.GRUCell, L.SimpleRNNCell)
_RNN_CELL_ATTRIBUTES = ("kernel", "recurrent_kernel")

SUPPORTED_LAYERS = (
    tuple(cls for classes, _ in ATTRIBUTES for cls in classes)
    + (L.MultiHeadAttention, L.LSTM, L.GRU, L.SimpleRNN, L.RNN)
)


def path_label(layer, weight):
    """A custom layer's weight named by its path below `layer` ('kernel', 'inner/kernel'), else its name."""
    return relative_path(layer, weight)


def _rnn_cells(layer):
    cell = layer.cell
    return list(cell.cells) if isinstance(cell, L.StackedRNNCells) else [cell]


class KernelRegistry:
    """The weights a technique touches in each layer, with a custom layer's own say (`own_weights`).

    Args:
        opts_in: `opts_in(layer)`: whether the layer says itself what to touch (a `PrunableLayer`, a
            `ClusterableLayer`).
        own_weights: `own_weights(layer)` returns `[(variable, label)]` for such a (built) layer.
        verb: what the technique does, for messages ("pruned", "clustered").

    Example:

    ```python
    registry = KernelRegistry(lambda layer: False, None, "pruned")
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    assert registry.labelled_weights(dense) == [(dense.kernel, "kernel")]
    ```
    """

    def __init__(self, opts_in, own_weights, verb):
        self.defines_own = opts_in
        self.own_weights = own_weights
        self.verb = verb

    def _is_supported_cell(self, cell):
        return self.defines_own(cell) or isinstance(cell, _RNN_CELLS)

    def is_builtin(self, layer):
        """A Keras layer in the table (or a recurrent layer of supported cells), or one that opts in."""
        if self.defines_own(layer):
            return True
        if isinstance(layer, L.RNN):
            return all(self._is_supported_cell(cell) for cell in _rnn_cells(layer))
        return isinstance(layer, SUPPORTED_LAYERS)

    @staticmethod
    def _may_hold_sublayers(layer):
        # Keras's own layers are handled whole or not at all (tfmot touches no Bidirectional, TimeDistributed ...);
        # wrappers (kopt's included) and Sequential/Functional models are handled by the model rewrite. A
        # subclassed model is a custom layer.
        return not (is_keras_layer(layer) or is_graph_model(layer) or isinstance(layer, L.Wrapper))

    def _sublayer_weights(self, layer):
        """`[(variable, label)]` of the supported sublayers of a custom layer, at any depth, labelled by path."""
        found, seen = [], set()

        def visit(container):
            for sub in sublayers(container):
                if self.is_builtin(sub):
                    if not sub.built or not self.is_used_by_default(sub):
                        continue
                    for variable, _ in self.labelled_weights(sub):
                        if id(variable) not in seen:
                            seen.add(id(variable))
                            found.append((variable, path_label(layer, variable)))
                elif not isinstance(sub, L.Wrapper):
                    visit(sub)

        visit(layer)
        return found

    def holds_sublayers(self, layer):
        """Whether `layer` is a custom layer handled through the Dense, EinsumDense, Conv* ... it holds."""
        return (not self.is_builtin(layer) and self._may_hold_sublayers(layer) and layer.built
                and bool(self._sublayer_weights(layer)))

    def is_supported(self, layer):
        """Whether `layer` is in the table, opts in, or (built, custom) holds supported layers."""
        return self.is_builtin(layer) or self.holds_sublayers(layer)

    def is_used_by_default(self, layer):
        """Whether handling a whole model handles `layer`: False for DepthwiseConv unless it opts in itself."""
        return self.is_supported(layer) and (self.defines_own(layer) or not isinstance(layer, DEPTHWISE_LAYERS))

    def _as_variable(self, layer, value, attribute):
        if not isinstance(value, keras.Variable):
            raise ValueError(
                f"Layer '{layer.name}' ({layer.__class__.__name__}): `{attribute}` is not a plain variable "
                f"(got {type(value).__name__}); LoRA-enabled or already-quantized layers cannot be {self.verb}. "
                f"Do it before calling enable_lora()/quantize()."
            )
        return value

    def _rnn_weights(self, layer):
        # Named like tfmot's variables, from the cells' names (kept by get_config), not from variable paths,
        # which depend on how the layer was built: 'lstm_cell/kernel' for an LSTM,
        # 'stacked_rnn_cells/lstm_cell/kernel' for the first cell of RNN([LSTMCell(..), GRUCell(..)]).
        prefix = f"{layer.cell.name}/" if isinstance(layer.cell, L.StackedRNNCells) else ""
        weights = []
        for cell in _rnn_cells(layer):
            if self.defines_own(cell):
                weights.extend((w, f"{prefix}{cell.name}/{label}") for w, label in self.own_weights(cell))
            else:
                weights.extend(
                    (self._as_variable(layer, getattr(cell, a), f"{cell.name}.{a}"), f"{prefix}{cell.name}/{a}")
                    for a in _RNN_CELL_ATTRIBUTES
                )
        return weights

    def labelled_weights(self, layer):
        """`[(variable, label)]` of the weights of `layer` the technique touches.

        The label names the weight within the layer, independently of how it was built: 'kernel' (Dense),
        'query/kernel' (MultiHeadAttention), 'lstm_cell/recurrent_kernel' (LSTM), the path below a custom layer
        ('self_attention_layer/query/kernel' in a KerasHub TransformerEncoder).
        """
        if self.defines_own(layer):
            return self.own_weights(layer)
        if isinstance(layer, L.MultiHeadAttention):
            subs = [getattr(layer, name) for name in _MHA_SUBLAYERS]
            return [(self._as_variable(layer, s.kernel, f"{s.name}.kernel"), f"{s.name}/kernel") for s in subs]
        if isinstance(layer, L.RNN) and self.is_supported(layer):
            return self._rnn_weights(layer)
        for classes, attributes in ATTRIBUTES:
            if isinstance(layer, classes):
                return [(self._as_variable(layer, getattr(layer, a), a), a) for a in attributes]
        if self.holds_sublayers(layer):
            return self._sublayer_weights(layer)
        raise ValueError(f"Layer '{layer.name}' ({layer.__class__.__name__}) cannot be {self.verb}.")
