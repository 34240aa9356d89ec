"""Which weights of which Keras layer are clustered: the table pruning uses, with clustering's opt-in.

As in tfmot: Dense, Conv*, Conv*Transpose, SeparableConv* (pointwise kernel), Embedding, MultiHeadAttention
(its four projection kernels) and the kernels of LSTM/GRU/SimpleRNN cells; DepthwiseConv kernels are not clustered.
kopt also clusters EinsumDense and the sublayers of custom layers (KerasHub's transformer blocks).
"""

from kopt._keras.kernels import KernelRegistry
from kopt.clustering.clusterable_layer import ClusterableLayer


def _opts_in(layer):
    return isinstance(layer, ClusterableLayer) or callable(getattr(layer, "get_clusterable_weights", None))


def _own_clusterable_weights(layer):
    return [(variable, name) for name, variable in layer.get_clusterable_weights()]


REGISTRY = KernelRegistry(_opts_in, _own_clusterable_weights, "clustered")
