"""Which channels of a Keras model must be removed together: the dependency graph behind `channel_groups`.

Every tensor's last axis (its channels) is a list of channel ids. A layer that makes new channels (Conv*, Dense,
Embedding, SeparableConv's pointwise part) gives its outputs fresh ids; a layer that acts per channel
(BatchNormalization, DepthwiseConv, activations, pooling) passes its input's ids through; an element-wise merge
(`Add`, `Multiply`, `x * y`) makes the ids of its inputs equal (a union-find over ids); a Concatenate joins
them end to end; a Flatten repeats them once per position. A channel is then a class of equal ids, and a
group is a set of channels that share the layers that make them: removing channel k of a group removes filter k
of each of those layers, row k of each layer that reads it, and entry k of every per-channel layer between.

Channels the model cannot lose are blocked, with the reason: the model's inputs and outputs, channels that feed
a layer kopt does not know how to slice (MultiHeadAttention, RNNs, nested models, custom layers, grouped
convolutions ...), a Reshape that changes the channel axis, a Softmax or normalization across channels.
"""

import dataclasses

import keras
import numpy as np

from kopt._keras.clone import is_graph_model, traced_graph
from kopt._keras.nodes import graph_calls
from kopt._keras.operations import is_elementwise_operation

L = keras.layers

# Layers that act on each channel alone and hold no per-channel weights.
_PASS_THROUGH = (
    L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.Identity, L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D, L.ZeroPadding1D,
    L.ZeroPadding2D, L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D,
    L.UpSampling3D, L.Rescaling, L.ActivityRegularization, L.Masking,
)
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_CONVOLUTIONS = (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_NORMALIZATIONS = (L.BatchNormalization, L.LayerNormalization)


def _last_axis(axis, rank):
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and rank is not None and axes[0] % rank == rank - 1


def _channels_last(layer):
    return getattr(layer, "data_format", "channels_last") == "channels_last"


@dataclasses.dataclass
class LayerChannels:
    """How one layer's weights follow the channels: the ids of its input and output channels (None: untouched)."""

    layer: object
    role: str  # "producer", "per_channel", "reshape" or "embedding"
    inputs: list = None  # channel ids of the input's last axis (producers: the rows of the kernel)
    outputs: list = None  # producers: the ids of the new channels; per-channel layers: same as inputs
    key_inputs: list = None  # attention: the channel ids of the key and value inputs, and one id per head
    value_inputs: list = None
    heads: list = None


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must be removed together (see `kopt.structured.channel_groups`).

    Attributes:
        index: the group's number in `channel_groups(model)`.
        channels: how many channels the group has.
        producers: names of the layers whose output channels (filters, units) the group is.
        layers: names of every layer whose weights follow the group (producers, per-channel layers, readers).
        prunable: whether `prune_channels` may remove its channels.
        reason: why not, when it may not.
    """

    index: int
    channels: int
    producers: list
    layers: list
    prunable: bool
    reason: str = ""
    classes: list = dataclasses.field(default_factory=list, repr=False)  # channel class ids, in producer order
    members: list = dataclasses.field(default_factory=list, repr=False)  # each producer's classes

    def __str__(self):
        where = ", ".join(self.producers)
        followers = [name for name in self.layers if name not in self.producers]
        text = f"group {self.index}: {self.channels} channels from {where}"
        if followers:
            text += f"; also {', '.join(followers[:8])}" + (f" (+{len(followers) - 8} more)" if len(followers) > 8 else "")
        return text + ("" if self.prunable else f" -- left: {self.reason}")


class _UnionFind:
    def __init__(self):
        self.parent = []

    def new(self, count):
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return list(range(start, start + count))

    def find(self, i):
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class DependencyGraph:
    """The channel ids of every tensor of a Functional model, and how each layer's weights follow them."""

    def __init__(self, model):
        self.model = model
        self.ids = _UnionFind()
        self.tensor_ids = {}  # id(KerasTensor) -> list of channel ids (last axis), or None (not a channel axis)
        self.layers = {}  # id(layer) -> LayerChannels
        self.blocked = {}  # channel id -> reason
        self._analyse()

    # -- building -------------------------------------------------------------------------------

    def _fresh(self, tensor, reason=None):
        shape = tensor.shape
        if not shape or shape[-1] is None:
            return None
        ids = self.ids.new(shape[-1])
        if reason:
            self._block(ids, reason)
        return ids

    def _block(self, ids, reason):
        for i in ids or ():
            self.blocked.setdefault(i, reason)

    def _unite(self, a, b):
        for x, y in zip(a, b):
            self.ids.union(x, y)

    def _record(self, layer, role, inputs=None, outputs=None):
        known = self.layers.get(id(layer))
        if known is None:
            self.layers[id(layer)] = LayerChannels(layer, role, inputs, outputs)
            return self.layers[id(layer)]
        # A layer called several times: its weights are shared, so its channels are the same in every call.
        if inputs is not None and known.inputs is not None:
            self._unite(known.inputs, inputs)
        if role == "per_channel" and outputs is not None:
            self._unite(known.outputs, outputs)
        return known

    def _analyse(self):
        for op, inputs, outputs, arguments in graph_calls(self.model):
            in_ids = [self.tensor_ids.get(id(t)) for t in inputs]
            out_ids = self._propagate(op, inputs, in_ids, outputs, arguments)
            for tensor, ids in zip(outputs, out_ids):
                self.tensor_ids[id(tensor)] = ids
        for tensor in self.model.outputs:
            self._block(self.tensor_ids.get(id(tensor)), f"output channels of the model ('{tensor.name}')")

    def _nested(self, model, in_ids):
        """A nested Sequential/Functional model: its graph is followed as if it were inlined."""
        inner = model if not isinstance(model, keras.Sequential) else keras.Model(model.inputs, model.outputs)
        for tensor, ids in zip(inner.inputs, in_ids):
            self.tensor_ids[id(tensor)] = ids
        for op, inputs, outputs, arguments in graph_calls(inner):
            if isinstance(op, L.InputLayer):
                continue
            ids = self._propagate(op, inputs, [self.tensor_ids.get(id(t)) for t in inputs], outputs, arguments)
            for tensor, value in zip(outputs, ids):
                self.tensor_ids[id(tensor)] = value
        return [self.tensor_ids.get(id(t)) for t in inner.outputs]

    def _unknown(self, inputs, in_ids, outputs, reason):
        for tensor, ids in zip(inputs, in_ids):
            self._block(ids, reason)
        return [self._fresh(t, reason) for t in outputs]

    def _propagate(self, op, inputs, in_ids, outputs, arguments=((), {})):
        name = f"{type(op).__name__} '{op.name}'"
        if isinstance(op, L.InputLayer):
            return [self._fresh(t, f"channels of the model's input '{op.name}'") for t in outputs]
        if isinstance(op, keras.Model):
            if is_graph_model(op) and op.inputs and len(op.inputs) == len(inputs):
                return self._nested(op, in_ids)
            return self._unknown(inputs, in_ids, outputs, f"they feed the nested model {name}, kept whole")
        first = in_ids[0] if in_ids else None
        if not isinstance(op, L.Layer):
            return self._operation(op, inputs, in_ids, outputs, name)
        if isinstance(op, _CONVOLUTIONS + (L.Dense,)) and len(inputs) == 1 and first is not None:
            if getattr(op, "groups", 1) != 1 or not _channels_last(op):
                return self._unknown(inputs, in_ids, outputs, f"they feed {name} (grouped or channels-first)")
            known = self.layers.get(id(op))
            produced = known.outputs if known is not None else self._fresh(outputs[0])
            self._record(op, "producer", list(first), produced)
            return [produced]
        if isinstance(op, _SEPARABLE) and len(inputs) == 1 and first is not None:
            if op.depth_multiplier != 1 or not _channels_last(op):
                return self._unknown(inputs, in_ids, outputs, f"they feed {name} (depth_multiplier > 1)")
            known = self.layers.get(id(op))
            produced = known.outputs if known is not None else self._fresh(outputs[0])
            self._record(op, "producer", list(first), produced)
            return [produced]
        if isinstance(op, L.Embedding):
            known = self.layers.get(id(op))
            produced = known.outputs if known is not None else self._fresh(outputs[0])
            self._record(op, "embedding", None, produced)
            return [produced]
        if type(op) is L.MultiHeadAttention:
            return self._attention(op, inputs, in_ids, outputs, arguments, name)
        if isinstance(op, _DEPTHWISE) and first is not None:
            if op.depth_multiplier != 1 or not _channels_last(op):
                return self._unknown(inputs, in_ids, outputs, f"they feed {name} (depth_multiplier > 1)")
            self._record(op, "per_channel", list(first), list(first))
            return [list(first)]
        if isinstance(op, _NORMALIZATIONS) and first is not None:
            if not _last_axis(op.axis, len(inputs[0].shape)):
                return self._unknown(inputs, in_ids, outputs, f"{name} normalizes over other axes")
            if isinstance(op, L.LayerNormalization) and getattr(op, "rms_scaling", False):
                return self._unknown(inputs, in_ids, outputs, f"{name} uses rms_scaling")
            # A LayerNormalization's statistics are over the channels: removing some changes the others' values.
            # Allowed, as Torch-Pruning does: it normalizes over the channels that remain.
            self._record(op, "per_channel", list(first), list(first))
            return [list(first)]
        if isinstance(op, L.PReLU) and first is not None:
            shared = set(op.shared_axes or ())
            rank = len(inputs[0].shape)
            if (rank - 1) in shared or -1 in shared:
                return [list(first)]
            self._record(op, "per_channel", list(first), list(first))
            return [list(first)]
        if isinstance(op, _PASS_THROUGH) and len(inputs) == 1:
            if isinstance(op, L.Rescaling) and (np.size(op.scale) > 1 or np.size(op.offset) > 1):
                return self._unknown(inputs, in_ids, outputs, f"{name} has per-channel constants")
            return [None if first is None else list(first)]
        if isinstance(op, L.Softmax):
            rank = len(inputs[0].shape)
            if _last_axis(op.axis, rank):
                return self._unknown(inputs, in_ids, outputs, f"{name} normalizes over the channels")
            return [None if first is None else list(first)]
        if isinstance(op, _MERGES):
            return [self._merge(inputs, in_ids, outputs[0], name)]
        if isinstance(op, L.Concatenate):
            return [self._concatenate(op.axis, inputs, in_ids, outputs[0], name)]
        if isinstance(op, L.Flatten):
            return [self._flatten(inputs[0], first, outputs[0], name)]
        if isinstance(op, L.Reshape):
            if first is not None and inputs[0].shape[-1] == outputs[0].shape[-1]:
                self._record(op, "reshape", list(first), list(first))
                return [list(first)]
            return self._unknown(inputs, in_ids, outputs, f"they feed {name}, which reshapes the channel axis")
        if not op.weights and op.built:
            # A custom layer with no weights whose call is keras.ops arithmetic (InceptionResNetV2's scaling
            # layer): followed through its traced operations. Its config holds no channel count to change.
            traced = traced_graph(op, op.name)
            if traced is not None and len(traced.inputs) == len(inputs):
                return self._nested(traced, in_ids)
        return self._unknown(inputs, in_ids, outputs, f"they feed {name}, which kopt cannot slice")

    def _attention(self, op, inputs, in_ids, outputs, arguments, name):
        """Keras's MultiHeadAttention: its heads are a group of their own; it reads the query, key and value
        channels, and (with no `output_shape`) its output channels are the query's."""
        args, kwargs = arguments
        query = args[0] if args else kwargs.get("query")
        value = args[1] if len(args) > 1 else kwargs.get("value")
        key = args[2] if len(args) > 2 else kwargs.get("key")
        key = value if key is None else key
        ids = [self.tensor_ids.get(id(t)) if t is not None else None for t in (query, key, value)]
        config = op.get_config()
        if (any(i is None for i in ids) or config.get("output_shape") is not None or config.get("use_gate")
                or len(query.shape) != 3):
            return self._unknown(inputs, in_ids, outputs, f"they feed {name} (gated, output_shape or "
                                 "attention over several axes)")
        query_ids, key_ids, value_ids = (list(i) for i in ids)
        known = self.layers.get(id(op))
        info = self._record(op, "attention", query_ids, query_ids)
        if known is None:
            info.key_inputs, info.value_inputs, info.heads = key_ids, value_ids, self.ids.new(op.num_heads)
        else:
            self._unite(info.key_inputs, key_ids)
            self._unite(info.value_inputs, value_ids)
        result = [list(query_ids)]
        return result + [self._fresh(t, f"attention scores of {name}") for t in outputs[1:]]

    def _operation(self, op, inputs, in_ids, outputs, name):
        if is_elementwise_operation(op) and len(outputs) == 1:
            return [self._merge(inputs, in_ids, outputs[0], name)]
        return self._unknown(inputs, in_ids, outputs, f"they feed the operation {name}, which kopt cannot slice")

    def _merge(self, inputs, in_ids, output, name):
        """Element-wise: channel c of each input is channel c of the output (an input with 1 channel broadcasts)."""
        channels = output.shape[-1] if output.shape else None
        result = None
        for tensor, ids in zip(inputs, in_ids):
            if ids is None or len(ids) != channels:
                if tensor.shape and tensor.shape[-1] not in (1, None) and tensor.shape[-1] != channels:
                    return self._unknown(inputs, in_ids, [output], f"they feed {name} with mismatched shapes")[0]
                continue  # a broadcast scalar or single channel
            if result is None:
                result = list(ids)
            else:
                self._unite(result, ids)
        return result if result is not None else self._fresh(output)

    def _concatenate(self, axis, inputs, in_ids, output, name):
        rank = len(output.shape)
        if axis % rank != rank - 1:
            return self._merge(inputs, in_ids, output, name)
        if any(ids is None for ids in in_ids):
            return self._unknown(inputs, in_ids, [output], f"{name} joins tensors of unknown channels")[0]
        return [i for ids in in_ids for i in ids]

    def _flatten(self, tensor, ids, output, name):
        if ids is None or any(d is None for d in tensor.shape[1:]):
            return self._unknown([tensor], [ids], [output], f"they feed {name} with an open spatial size")[0]
        positions = int(np.prod(tensor.shape[1:-1])) if len(tensor.shape) > 2 else 1
        return list(ids) * positions  # row-major: channel of flat index j is j % C

    # -- reading ----------------------------------------------------------------------------------

    def find(self, i):
        return self.ids.find(i)

    def groups(self):
        """The `ChannelGroup`s of the model, in the order their first producer appears."""
        entries = []  # (layer name, channel ids it makes)
        for info in self.layers.values():
            if info.role in ("producer", "embedding"):
                entries.append((info.layer.name, info.outputs))
            elif info.role == "attention":
                entries.append((info.layer.name, info.heads))
        blocked_classes = {}
        for i, reason in self.blocked.items():
            blocked_classes.setdefault(self.find(i), reason)
        # Producers that share a channel class are one group.
        owner = {}
        components = _UnionFind()
        component_of = components.new(len(entries))
        for index, (_, ids) in enumerate(entries):
            for i in ids:
                c = self.find(i)
                if c in owner:
                    components.union(owner[c], component_of[index])
                else:
                    owner[c] = component_of[index]
        members = {}
        for index, entry in enumerate(entries):
            members.setdefault(components.find(index), []).append(entry)
        groups = []
        for group_entries in members.values():
            classes = []
            for _, ids in group_entries:
                for i in ids:
                    c = self.find(i)
                    if c not in classes:
                        classes.append(c)
            class_set = set(classes)

            def touches(ids):
                return bool(ids) and any(self.find(i) in class_set for i in ids)

            names = [name for name, _ in group_entries]
            related = [info.layer.name for info in self.layers.values()
                       if touches(info.inputs) or touches(info.outputs) or touches(info.key_inputs)
                       or touches(info.value_inputs)]
            reasons = [blocked_classes[c] for c in classes if c in blocked_classes]
            groups.append(ChannelGroup(
                index=len(groups), channels=len(classes), producers=names,
                layers=names + [n for n in related if n not in names],
                prunable=not reasons, reason=reasons[0] if reasons else "", classes=classes,
                members=[[self.find(i) for i in ids] for _, ids in group_entries]))
        return groups
