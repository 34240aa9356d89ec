"""`channel_groups` and `prune_channels`: remove whole channels from a Keras model, so that it runs faster."""

import logging
import math
import numbers

import keras
import numpy as np

from kopt._keras.clone import copy_layer, is_graph_model, rewrite_model, walk_layers
from kopt.structured import _importance as importance_lib
from kopt.structured.dependency import DependencyGraph
from kopt.structured._slicing import sliced_attention, sliced_layer

logger = logging.getLogger("kopt")


def _functional(model, name):
    if not isinstance(model, keras.Model) or not is_graph_model(model):
        raise ValueError(
            f"`{name}` must be a Sequential or Functional keras.Model, got {type(model).__name__}. (A subclassed "
            "model: build it as a Functional model, `keras.Model(inputs, model(inputs))` keeps it whole.)")
    if not model.built or not model.inputs:
        raise ValueError(f"`{name}` ('{model.name}') is not built: give it a keras.Input first.")
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs)
    return model


def channel_groups(model):
    """The groups of channels of `model` that must be removed together.

    A convolution's filters, the BatchNormalization and DepthwiseConv2D after
    it, and the rows of the layers that read them form one group; a residual
    `Add` joins the groups of its inputs into one; a Concatenate maps its
    inputs' channels with offsets; a Flatten maps each channel to its H*W rows
    of the Dense after it; a squeeze-excite `Multiply` couples the expanding
    Dense with the convolution it scales. Groups that cannot lose channels
    (the model's outputs, channels feeding a layer kopt cannot slice) are
    listed too, with the reason.

    Args:
        model: a built Sequential or Functional model.

    Returns:
        A list of `ChannelGroup`s, each with `.channels`, `.producers` (the
        layers making its channels), `.layers` (every layer whose weights
        follow it), `.prunable` and `.reason`. `print(group)` reads well.

    Example:

    ```python
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="a")(inputs)
    y = keras.layers.Conv2D(16, 3, padding="same", name="b")(x)
    x = keras.layers.Add()([x, y])
    outputs = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    groups = kopt.structured.channel_groups(keras.Model(inputs, outputs))
    assert [g.producers for g in groups] == [["a", "b"], ["head"]]
    assert groups[0].prunable and not groups[1].prunable  # the model's outputs stay
    ```
    """
    return DependencyGraph(_functional(model, "model")).groups()


def _check_ratio(ratio, groups, model):
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
            raise ValueError(f"`ratio`{where} must be a number in [0, 1), the fraction of channels to remove "
                             f"(e.g. 0.5); got {value!r}.")
        return float(value)

    if not isinstance(ratio, dict):
        return check(ratio, "")
    names = {layer.name for layer in walk_layers(model)}
    checked = {}
    for key, value in ratio.items():
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise ValueError(f"`ratio` keys must be layer names or group indices; got {key!r}.")
        if isinstance(key, int) and not 0 <= key < len(groups):
            raise ValueError(f"`ratio` has group {key}, but the model has groups 0..{len(groups) - 1} "
                             "(see kopt.structured.channel_groups).")
        if isinstance(key, str) and key not in names:
            raise ValueError(f"`ratio` names layer '{key}', which is not in the model.")
        checked[key] = check(value, f"[{key!r}]")
    return checked


def _ignored_names(ignored_layers, model):
    names = {layer.name for layer in walk_layers(model)}
    result = set()
    for item in ignored_layers or ():
        name = item.name if isinstance(item, keras.layers.Layer) else item
        if not isinstance(name, str) or name not in names:
            raise ValueError(f"`ignored_layers` holds {item!r}, which is not a layer of the model. Pass layer names "
                             "or the layers themselves.")
        result.add(name)
    return result


def _group_ratio(group, ratio):
    if not isinstance(ratio, dict):
        return ratio
    if group.index in ratio:
        return ratio[group.index]
    named = [ratio[name] for name in group.producers if name in ratio]
    return max(named) if named else 0.0


def _kept_count(channels, removed, round_to):
    keep = channels - removed
    if round_to and channels > round_to:
        keep = max(round_to, int(math.ceil(keep / round_to)) * round_to)
    return max(1, min(channels, keep))


def _scores(graph, model, importance, data, loss):
    if importance in ("l1", "l2"):
        return importance_lib.weight_scores(graph, importance)
    if importance == "bn_scale":
        scores = importance_lib.bn_scores(graph)
        fallback = importance_lib.weight_scores(graph, "l2")
        return {c: scores.get(c, value) for c, value in fallback.items()}
    scores = importance_lib.taylor_scores(graph, model, data, loss)
    fallback = importance_lib.weight_scores(graph, "l2")  # attention heads: no Taylor score, their norm
    return {c: scores.get(c, value) for c, value in fallback.items()}


def _check_importance(importance, data, model):
    if importance not in importance_lib.IMPORTANCES:
        raise ValueError(f"`importance` must be one of {', '.join(importance_lib.IMPORTANCES)}; got {importance!r}.")
    if importance != "taylor":
        return None
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError("`importance`='taylor' needs `data=(x, y)`: a few hundred training samples and their "
                         "targets, to compute each channel's effect on the loss.")
    loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    if loss is None:
        raise ValueError("`importance`='taylor' needs the model compiled with its loss (model.compile(loss=...)), "
                         "to compute each channel's effect on the loss.")
    return keras.losses.get(loss) if isinstance(loss, str) else loss


def _keep_every_producer(group, removed, scores):
    """Gives back each producer of `group` its best channel if all of its channels were chosen (a group whose
    channels come from several producers through a Concatenate can otherwise empty one of them)."""
    for classes in group.members:
        if classes and all(c in removed for c in classes):
            removed.discard(max(classes, key=lambda c: scores.get(c, 0.0)))


def select_channels(groups, scores, ratio, ignored, round_to, global_ranking):
    """The channel classes to remove: the lowest-scored `ratio` of each prunable group (or of all, globally)."""
    candidates = [g for g in groups if g.prunable and not (set(g.producers) & ignored)]
    removed = set()
    if global_ranking:
        pool = []
        for group in candidates:
            values = np.array([scores.get(c, 0.0) for c in group.classes])
            mean = values.mean() if values.size and values.mean() > 0 else 1.0
            pool.extend((v / mean, group.index, c) for v, c in zip(values, group.classes))
        pool.sort()
        chosen = {}
        for _, index, c in pool[:int(len(pool) * ratio)]:
            chosen.setdefault(index, []).append(c)
        for group in candidates:
            count = group.channels - _kept_count(group.channels, len(chosen.get(group.index, ())), round_to)
            order = sorted(group.classes, key=lambda c: scores.get(c, 0.0))
            removed.update(order[:count])
            _keep_every_producer(group, removed, scores)
        return removed
    for group in candidates:
        share = _group_ratio(group, ratio)
        count = group.channels - _kept_count(group.channels, int(group.channels * share), round_to)
        order = sorted(group.classes, key=lambda c: scores.get(c, 0.0))
        removed.update(order[:count])
        _keep_every_producer(group, removed, scores)
    return removed


def shrunk_model(model, graph, removed):
    """A copy of `model` without the channel classes `removed` (see `DependencyGraph`): fewer filters, same graph."""

    def kept(ids):
        if ids is None:
            return None
        positions = [k for k, i in enumerate(ids) if graph.find(i) not in removed]
        return None if len(positions) == len(ids) else positions

    def rebuild(layer):
        info = graph.layers.get(id(layer))
        if info is None:
            return copy_layer(layer)
        if info.role == "attention":
            kept_all = [kept(ids) for ids in (info.inputs, info.key_inputs, info.value_inputs, info.heads)]
            return copy_layer(layer) if all(k is None for k in kept_all) else sliced_attention(layer, *kept_all)
        kept_in = kept(info.inputs)
        kept_out = kept(info.outputs) if info.role in ("producer", "embedding") else None
        if kept_in is None and kept_out is None:
            return copy_layer(layer)
        return sliced_layer(layer, kept_in, kept_out)

    return rewrite_model(model, rebuild)


def prune_channels(model, ratio=0.5, importance="l2", data=None, ignored_layers=(), round_to=8,
                   global_ranking=False):
    """Removes the least important channels of every prunable group, physically: a smaller, faster model.

    Each group (see `channel_groups`) loses `ratio` of its channels, those
    with the lowest importance; every layer of the group is sliced to match,
    so the result is a plain Keras model with the same graph, fewer filters
    and units, and the weights of the channels that remain. Fine-tune it
    afterwards. Groups that cannot lose channels are left, and named in a
    log line with the reason.

    Args:
        model: a built Sequential or Functional model (not modified).
        ratio: fraction of each group's channels to remove, in [0, 1); or a
            dict `{layer name or group index: fraction}` (groups not named
            keep all their channels).
        importance: "l1" or "l2" (norm of each filter, summed over the
            group's producers), "bn_scale" (|gamma| of the BatchNormalization
            layers on the channel; groups with none use "l2"), or "taylor"
            (|w * dL/dw| of each filter on `data`, with the model's compiled
            loss).
        data: `(x, y)` arrays for "taylor".
        ignored_layers: layers (or names) whose channels stay: any group
            they produce is left whole.
        round_to: keep a multiple of this many channels per group (8: what
            vectorized kernels like); 0 or None for exact counts.
        global_ranking: rank channels across groups (each group's scores
            divided by its mean) and remove the lowest `ratio` of all, instead
            of `ratio` of each group. `ratio` must then be a number.

    Returns:
        A new, uncompiled model of the same kind (Sequential or Functional).

    Example:

    ```python
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    small = kopt.structured.prune_channels(model, ratio=0.5)
    assert small.count_params() < 0.35 * model.count_params()
    ```
    """
    functional = _functional(model, "model")
    graph = DependencyGraph(functional)
    groups = graph.groups()
    ratio = _check_ratio(ratio, groups, model)
    if global_ranking and isinstance(ratio, dict):
        raise ValueError("`global_ranking`=True ranks all channels against one `ratio`: pass a number, not a dict.")
    ignored = _ignored_names(ignored_layers, model)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 0):
        raise ValueError(f"`round_to` must be a non-negative integer (8 by default, 0 for none); got {round_to!r}.")
    loss = _check_importance(importance, data, model)
    scores = _scores(graph, functional, importance, data, loss)
    removed = select_channels(groups, scores, ratio, ignored, round_to or 0, global_ranking)
    left = [g for g in groups if not g.prunable and _group_ratio(g, ratio) > 0]
    if left:
        logger.info("prune_channels: groups left whole: %s", "; ".join(
            f"{', '.join(g.producers)} ({g.reason})" for g in left))
    result = shrunk_model(model, graph, removed)
    logger.info("prune_channels: %d of %d channels removed; parameters %d -> %d", len(removed),
                sum(g.channels for g in groups), model.count_params(), result.count_params())
    return result
