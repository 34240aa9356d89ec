"""`PruningPolicy` and `PruneForLatencyOnXNNPack`: which layers of a model `prune_low_magnitude` may wrap.

tfmot's `pruning_policy.py` for Keras 3. The check walks the model's graph of
layers; nested Sequential/Functional models are walked as if their layers sat
in the outer graph (tfmot follows a nested Sequential only into its first layer).
"""

import abc
import warnings

import keras

from kopt._keras.clone import is_graph_model
from kopt._keras.nodes import graph_nodes, producer
from kopt._keras.operations import is_add_subtract_or_multiply
from kopt.sparsity.wrapper import PruneLowMagnitude

L = keras.layers

# The plain graph operations of `x + y`, `x - y`, `x * y` (tfmot accepts tf.math.add/subtract/multiply
# and tf.identity as TFOpLambda layers; Keras 3 records these operations, and has an Identity layer).
_ACTIVATIONS = ("relu", "relu6", "leaky_relu", "elu", "sigmoid")

_STEM_ERROR = (
    "Could not find `Conv2D 3x3` layer with stride 2x2, `input filters == 3` and `VALID` padding and "
    "preceding `ZeroPadding2D` with `padding == 1` in all input branches of the model"
)
_POOLING_ERROR = "Could not find a `GlobalAveragePooling2D` layer in all output branches"
_SUPPORTED = (
    "1x1 Conv2D (stride 1, no dilation, groups=1); DepthwiseConv2D 3x3 or 5x5 (depth_multiplier=1, no dilation) "
    "with padding='same' and stride 1, or padding='valid' and stride 1 or 2 after a ZeroPadding2D of 1 (3x3) or "
    "2 (5x5) on each side; BatchNormalization on the channels (last) axis; ReLU, LeakyReLU, ELU, Activation "
    "relu/relu6/leaky_relu/elu/sigmoid; Add, Multiply, `x + y`, `x - y`, `x * y`, Identity, Dropout, ZeroPadding2D; "
    "UpSampling2D(interpolation='bilinear'); GlobalAveragePooling2D(keepdims=True)"
)
_NO_POLICY = "To prune the model's layers without this policy, pass pruning_policy=None."


class PruningPolicy(abc.ABC):
    """Says which layers of a model `prune_low_magnitude` wraps, and which models it accepts.

    Same API as `tfmot.sparsity.keras.PruningPolicy`. Passed as
    `prune_low_magnitude(model, pruning_policy=...)`, a policy first checks the
    whole model (`ensure_model_supports_pruning`, which raises if the model
    does not qualify), then is asked of every layer, nested models included
    (`allow_pruning`): only the layers it allows, among those kopt can prune,
    are wrapped. Layers already wrapped in `PruneLowMagnitude` stay wrapped.
    Like tfmot, a policy applies to whole models only: it is not consulted when
    `prune_low_magnitude` is given a single layer or a list.

    Subclass it to write your own policy.

    Example:

    ```python
    class DenseOnly(kopt.sparsity.PruningPolicy):
        def allow_pruning(self, layer):
            return isinstance(layer, keras.layers.Dense)

        def ensure_model_supports_pruning(self, model):
            if not any(isinstance(layer, keras.layers.Dense) for layer in model.layers):
                raise ValueError("The model has no Dense layer to prune.")

    cnn = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3),
                            keras.layers.Flatten(), keras.layers.Dense(2)])
    pruned = kopt.sparsity.prune_low_magnitude(cnn, pruning_policy=DenseOnly())
    assert [type(layer).__name__ for layer in pruned.layers] == ["Conv2D", "Flatten", "PruneLowMagnitude"]
    ```
    """

    @abc.abstractmethod
    def allow_pruning(self, layer):
        """Whether `prune_low_magnitude` may wrap `layer`.

        Args:
            layer: a layer of the model (or of a model nested in it).

        Returns:
            True to wrap the layer (if kopt can prune it), False to leave it as it is.
        """
        raise NotImplementedError

    @abc.abstractmethod
    def ensure_model_supports_pruning(self, model):
        """Checks that the model qualifies for this policy.

        Args:
            model: the `keras.Model` given to `prune_low_magnitude`.

        Raises:
            ValueError: if the model does not qualify (e.g. holds an unsupported layer).
        """
        raise NotImplementedError


class PruneForLatencyOnXNNPack(PruningPolicy):
    """Prunes only the 1x1 Conv2D layers, in models that XNNPACK's sparse inference can run.

    Same rules as `tfmot.sparsity.keras.PruneForLatencyOnXNNPack`. XNNPACK
    (the default CPU kernels of TFLite/LiteRT) runs a float model's 1x1
    convolutions on sparse weights only inside a subgraph that starts at a
    3x3, stride 2, 'valid' Conv2D on a 3-channel (channels-last) input, right
    after a `ZeroPadding2D(1)`, and ends at `GlobalAveragePooling2D`, with only
    supported operations in between. `ensure_model_supports_pruning` checks
    exactly that and raises a ValueError otherwise:

    - every path from an input reaches such a stem, and every path back from
      an output reaches a GlobalAveragePooling2D (layers before the stem and
      after the pooling are free);
    - in between only: 1x1 Conv2D (stride 1, no dilation, groups=1);
      DepthwiseConv2D 3x3 or 5x5 (depth_multiplier=1, no dilation) with 'same'
      padding and stride 1, or 'valid' padding, stride 1 or 2 and a
      ZeroPadding2D of 1 (3x3) or 2 (5x5) before it; BatchNormalization on the
      channel axis; ReLU, LeakyReLU, ELU and Activation relu / relu6 /
      leaky_relu / elu / sigmoid; Add, Multiply, `x + y`, `x - y`, `x * y`,
      Identity, Dropout, ZeroPadding2D; UpSampling2D(interpolation='bilinear');
      GlobalAveragePooling2D(keepdims=True). A Conv2D's own `activation` is not
      checked (as in tfmot).

    `allow_pruning` then lets `prune_low_magnitude` wrap every Conv2D with
    `kernel_size=(1, 1)` (including one after the pooling, e.g. a 1x1
    classifier) and nothing else, so 3x3 convolutions, depthwise convolutions
    and Dense layers stay dense.

    kopt's choices where Keras 3 differs from tf_keras:

    - Nested Sequential/Functional models are checked as if their layers sat in
      the outer graph, and their 1x1 Conv2D layers are pruned.
    - Custom layers and nested subclassed models run operations the policy
      cannot see: between the stem and the pooling they are unsupported (as in
      tfmot), and they are never wrapped, so a 1x1 Conv2D held inside one as an
      attribute stays dense. A layer subclassing Conv2D counts as a Conv2D.
    - Conv2D, DepthwiseConv2D, ZeroPadding2D, UpSampling2D and
      GlobalAveragePooling2D must be `data_format="channels_last"`
      (XNNPACK runs NHWC; tfmot checks this only for BatchNormalization).
    - Keras 3's DepthwiseConv2D and Conv2DTranspose are not Conv2D subclasses
      (they are in tf_keras), so a 1x1 one is never wrapped.

    References:
        - [Fast Sparse ConvNets](https://arxiv.org/abs/1911.09723)
        - XNNPACK sparse inference, "Sparse Inference" in
          https://github.com/tensorflow/tensorflow/blob/master/tensorflow/lite/delegates/xnnpack/README.md

    Example:

    ```python
    L = keras.layers
    inputs = keras.Input((32, 32, 3))
    x = L.ZeroPadding2D(1)(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="valid", name="stem")(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Conv2D(16, 1, name="pointwise")(x)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    outputs = L.Dense(10, name="classifier")(L.Flatten()(x))
    model = keras.Model(inputs, outputs)

    pruned = kopt.sparsity.prune_low_magnitude(
        model, pruning_policy=kopt.sparsity.PruneForLatencyOnXNNPack())
    wrapped = [layer.layer.name for layer in pruned.layers
               if isinstance(layer, kopt.sparsity.PruneLowMagnitude)]
    assert wrapped == ["pointwise"]  # the stem, the depthwise conv and the Dense stay dense
    ```
    """

    def allow_pruning(self, layer):
        """Allows only Conv2D layers with `kernel_size == (1, 1)`."""
        return isinstance(layer, L.Conv2D) and tuple(layer.kernel_size) == (1, 1)

    def ensure_model_supports_pruning(self, model):
        """Raises a ValueError unless `model` has the structure XNNPACK's sparse inference runs (see the class).

        Args:
            model: a built Sequential or Functional `keras.Model`.

        Raises:
            ValueError: if `model` is subclassed or unbuilt, has no qualifying
                stem on every input branch or no GlobalAveragePooling2D on
                every output branch, or holds an unsupported layer in between.
        """
        if not isinstance(model, keras.Model):
            raise ValueError(f"`model` must be a keras.Model, got {type(model).__name__}.")
        if not is_graph_model(model):
            raise ValueError(
                "Subclassed models are not supported currently. "
                f"{type(self).__name__} reads the model's graph of layers: build '{model.name}' as a Functional "
                "or Sequential model. " + _NO_POLICY)
        if not model.built:
            raise ValueError(
                "Unbuilt models are not supported currently. "
                f"Give the Sequential model '{model.name}' a keras.Input(shape) first layer, or call "
                "model.build(input_shape) before pruning it.")
        graph = _Graph(model)

        start_layers = _lookup_layers(graph.inputs, lambda layer: self._is_start_layer(layer, graph), graph.consumers)
        if not start_layers:
            raise ValueError(
                f"{_STEM_ERROR}. XNNPACK's sparse inference starts at `keras.layers.ZeroPadding2D(1)` followed by "
                "`keras.layers.Conv2D(filters, 3, strides=2, padding='valid')` on a 3-channel, channels-last image "
                "(keras.applications models use padding='same' there and do not qualify). " + _NO_POLICY)

        end_layers = _lookup_layers(graph.outputs, _is_end_layer, graph.producers)
        if not end_layers:
            raise ValueError(
                f"{_POOLING_ERROR}. XNNPACK's sparse inference ends at a keras.layers.GlobalAveragePooling2D "
                "that every output depends on. " + _NO_POLICY)

        # Every layer between the start and the end layers must be supported (tfmot stops at the first dead end;
        # every layer is visited here, which only differs for graphs tfmot's checks above already reject).
        to_visit = [layer for start in start_layers for layer in graph.consumers(start)]
        seen = {id(layer) for layer in to_visit}
        while to_visit:
            layer = to_visit.pop()
            if any(layer is end for end in end_layers):
                continue
            if not self._check_layer_support(layer, graph):
                raise ValueError(
                    f"Layer {layer.__class__.__name__} is not supported for the {type(self).__name__} pruning "
                    f"policy: '{layer.name}' sits between the stem and the GlobalAveragePooling2D, where XNNPACK's "
                    f"sparse inference supports only: {_SUPPORTED}. " + _NO_POLICY)
            for following in graph.consumers(layer):
                if id(following) not in seen:
                    seen.add(id(following))
                    to_visit.append(following)

    def _is_start_layer(self, layer, graph):
        """Whether `layer` starts a subgraph of sparse inference."""
        if not isinstance(layer, L.Conv2D) or not _channels_last(layer):
            return False
        producers = graph.producers(layer)
        return (getattr(layer, "kernel", None) is not None and tuple(layer.kernel.shape[:3]) == (3, 3, 3)
                and tuple(layer.strides) == (2, 2) and layer.padding.lower() == "valid"
                and len(producers) == 1 and _is_zero_padding(producers[0], 1))

    def _check_layer_support(self, layer, graph):
        """Whether XNNPACK's sparse subgraph supports `layer` (its compatibility function, as tfmot mimics it)."""
        if isinstance(layer, PruneLowMagnitude):
            return self._check_layer_support(layer.layer, graph)
        if isinstance(layer, (L.Add, L.Multiply, L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.Identity)):
            return True
        if is_add_subtract_or_multiply(layer):
            return True
        if isinstance(layer, L.ZeroPadding2D):
            return _channels_last(layer)
        if isinstance(layer, L.DepthwiseConv2D):
            return self._depthwise_supported(layer, graph)
        if isinstance(layer, L.Conv2D):
            return (_channels_last(layer) and layer.groups == 1 and tuple(layer.dilation_rate) == (1, 1)
                    and tuple(layer.kernel_size) == (1, 1) and tuple(layer.strides) == (1, 1))
        if isinstance(layer, L.GlobalAveragePooling2D):
            return _channels_last(layer) and bool(layer.keepdims)
        if isinstance(layer, L.BatchNormalization):
            return _channel_axis(layer) == 3
        if isinstance(layer, L.UpSampling2D):
            return _channels_last(layer) and layer.interpolation == "bilinear"
        if isinstance(layer, L.Activation):
            return _activation_name(layer.activation) in _ACTIVATIONS
        return False

    def _depthwise_supported(self, layer, graph):
        """3x3 or 5x5, stride 1 with 'same' padding, or stride 1 or 2 with 'valid' padding after a ZeroPadding2D."""
        if not _channels_last(layer) or layer.depth_multiplier != 1 or tuple(layer.dilation_rate) != (1, 1):
            return False
        kernel, strides, padding = tuple(layer.kernel_size), tuple(layer.strides), layer.padding.lower()
        if kernel not in ((3, 3), (5, 5)):
            return False
        if padding == "same":
            return strides == (1, 1)
        producers = graph.producers(layer)
        return (padding == "valid" and strides in ((1, 1), (2, 2)) and len(producers) == 1
                and _is_zero_padding(producers[0], kernel[0] // 2))


def _is_end_layer(layer):
    """Whether `layer` ends a subgraph of sparse inference."""
    return isinstance(layer, L.GlobalAveragePooling2D)


def _activation_name(activation):
    """The registered name of an activation function, or None for one Keras cannot serialize (a lambda)."""
    try:
        with warnings.catch_warnings():  # Keras warns that a lambda is unsafe to serialize; only its name is read
            warnings.simplefilter("ignore")
            name = keras.activations.serialize(activation)
    except Exception:  # Keras raises ValueError, or OSError reading a lambda's source
        return None
    return name if isinstance(name, str) else None


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


def _channel_axis(layer):
    """A BatchNormalization's axis as a non-negative index (Keras 3 keeps -1; tf_keras resolves it to 3)."""
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    if axis < 0:
        spec = layer.input_spec
        rank = getattr(spec, "ndim", None) or 4
        axis += rank
    return axis


def _is_zero_padding(layer, amount):
    return (isinstance(layer, L.ZeroPadding2D) and _channels_last(layer)
            and tuple(tuple(side) for side in layer.padding) == ((amount, amount), (amount, amount)))


def _lookup_layers(sources, stop_fn, next_fn):
    """tfmot's search: the layers satisfying `stop_fn` reached from `sources`, or [] if a path ends before one."""
    to_visit = list(sources)
    seen = {id(layer) for layer in to_visit}
    found = []
    while to_visit:
        layer = to_visit.pop()
        if stop_fn(layer):
            found.append(layer)
            continue
        next_layers = next_fn(layer)
        if not next_layers:
            return []
        for following in next_layers:
            if id(following) not in seen:
                seen.add(id(following))
                to_visit.append(following)
    return found


class _Graph:
    """The layers and plain operations of a model and which feeds which, nested Sequential/Functional models inlined.

    Attributes:
        inputs: the model's InputLayers.
        outputs: the layers/operations that compute the model's outputs.
    """

    def __init__(self, model):
        self._producers, self._consumers, self._by_id = {}, {}, {}
        self.inputs = [producer(tensor) for tensor in keras.tree.flatten(model.inputs)]
        outputs = self._inline(model, [[layer] for layer in self.inputs])
        self.outputs = list({id(op): op for ops in outputs for op in ops}.values())

    def producers(self, layer):
        """The layers/operations whose outputs `layer` takes."""
        return [self._by_id[i] for i in self._producers.get(id(layer), ())]

    def consumers(self, layer):
        """The layers/operations that take an output of `layer`."""
        return [self._by_id[i] for i in self._consumers.get(id(layer), ())]

    def _inline(self, model, sources):
        """Adds `model`'s layers fed by `sources` (a list of producing layers per model input); returns the same
        for its outputs."""
        if isinstance(model, keras.Sequential):
            current = [op for ops in sources for op in ops]
            for layer in model.layers:
                current = [op for ops in self._call(layer, [current], 1) for op in ops]
            return [current]
        inputs = keras.tree.flatten(model.inputs)
        made_by = {id(tensor): ops for tensor, ops in zip(inputs, sources)}
        for op, op_inputs, op_outputs in graph_nodes(model):
            if isinstance(op, L.InputLayer):
                continue
            fed_by = [made_by.get(id(tensor), []) for tensor in op_inputs]
            for tensor, ops in zip(op_outputs, self._call(op, fed_by, len(op_outputs))):
                made_by[id(tensor)] = ops
        return [made_by.get(id(tensor), []) for tensor in keras.tree.flatten(model.outputs)]

    def _call(self, op, fed_by, n_outputs):
        if is_graph_model(op):
            return self._inline(op, fed_by)
        self._by_id[id(op)] = op
        for ops in fed_by:
            for source in ops:
                self._by_id[id(source)] = source
                _append_once(self._producers.setdefault(id(op), []), id(source))
                _append_once(self._consumers.setdefault(id(source), []), id(op))
        return [[op]] * max(n_outputs, 1)


def _append_once(items, item):
    if item not in items:
        items.append(item)
