"""Gradual channel pruning in `fit`: `prune_channels_low_magnitude`, the mask updates, and `shrink`."""

import logging

import numpy as np
from keras import ops

from kopt._keras.clone import copy_layer, copy_with_values, rewrite_model, walk_layers
from kopt.sparsity.schedules import PolynomialDecay, PruningSchedule
from kopt.structured import _importance as importance_lib
from kopt.structured.channel_wrapper import ChannelPruneWrapper
from kopt.structured.dependency import DependencyGraph
from kopt.structured.prune_channels import _functional, _ignored_names, _kept_count, shrunk_model

logger = logging.getLogger("kopt")


def prune_channels_low_magnitude(model, pruning_schedule=None, importance="l2", ignored_layers=(), round_to=8):
    """Makes a model mask whole channel groups during `fit`, more as the schedule goes on.

    Every layer that makes or reads the channels of a prunable group (see
    `channel_groups`) is wrapped in a `ChannelPruneWrapper`. At each pruning
    step of the schedule (`kopt.sparsity`'s schedules: the sparsity is the
    fraction of each group's channels), `UpdatePruningStep` masks the channels
    with the lowest importance in each group, in every layer of the group at
    once. Train with `kopt.sparsity.UpdatePruningStep()`, then call `shrink` to
    remove the masked channels physically.

    Args:
        model: a built Sequential or Functional model (not modified).
        pruning_schedule: a `kopt.sparsity` schedule (default:
            `PolynomialDecay(0.0, 0.5, 0, 1000, frequency=100)`).
        importance: "l1" or "l2" (the norms of each channel's filters,
            recomputed at every pruning step).
        ignored_layers: layers (or names) whose groups are left whole.
        round_to: keep a multiple of this many channels per group.

    Returns:
        A new model with the wrappers, not compiled.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)])
    pruned = kopt.structured.prune_channels_low_magnitude(
        model, kopt.sparsity.ConstantSparsity(0.5, begin_step=0, frequency=1))
    pruned.compile("adam", "mse")
    pruned.fit(np.zeros((8, 8)), np.zeros((8, 2)), callbacks=[kopt.sparsity.UpdatePruningStep()], verbose=0)
    small = kopt.structured.shrink(pruned)
    assert small.layers[0].units == 16
    ```
    """
    pruning_schedule = pruning_schedule or PolynomialDecay(0.0, 0.5, 0, 1000, frequency=100)
    if not isinstance(pruning_schedule, PruningSchedule):
        raise ValueError(f"`pruning_schedule` must be a kopt.sparsity schedule (e.g. PolynomialDecay), got "
                         f"{pruning_schedule!r}.")
    if importance not in ("l1", "l2"):
        raise ValueError(f"`importance`={importance!r}: gradual pruning ranks channels by their filters' norms, "
                         "\"l1\" or \"l2\"; use prune_channels for \"bn_scale\" or \"taylor\".")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 0):
        raise ValueError(f"`round_to` must be a non-negative integer (8 by default, 0 for none); got {round_to!r}.")
    graph = DependencyGraph(_functional(model, "model"))
    ignored = _ignored_names(ignored_layers, model)
    # Attention layers take no masks (their heads and input rows are sliced by prune_channels only): groups they
    # read or make are left whole here.
    attention = {graph.find(i) for info in graph.layers.values() if info.role == "attention"
                 for ids in (info.inputs, info.key_inputs, info.value_inputs, info.heads) for i in ids}
    all_groups = graph.groups()
    for group in all_groups:
        if group.prunable and attention & set(group.classes):
            group.prunable, group.reason = False, "read or made by MultiHeadAttention (prune_channels slices it)"
    groups = [g for g in all_groups if g.prunable and not set(g.producers) & ignored]
    group_of = {c: g.index for g in groups for c in g.classes}
    left = [g for g in all_groups if not g.prunable]
    if left:
        logger.info("prune_channels_low_magnitude: groups left whole: %s", "; ".join(
            f"{', '.join(g.producers)} ({g.reason})" for g in left))

    def wrap(layer):
        info = graph.layers.get(id(layer))
        if info is None or info.role not in ("producer", "embedding"):
            return copy_layer(layer)
        outputs = [graph.find(i) for i in info.outputs]
        inputs = [graph.find(i) for i in info.inputs] if info.inputs else None
        produces = any(c in group_of for c in outputs)
        reads = inputs is not None and any(c in group_of for c in inputs)
        if not produces and not reads:
            return copy_layer(layer)
        return ChannelPruneWrapper(
            copy_layer(layer), pruning_schedule,
            output_classes=outputs if produces else None,
            output_groups=[group_of.get(c, -1) for c in outputs] if produces else None,
            input_classes=[c if c in group_of else -1 for c in inputs] if reads else None,
            importance=importance, round_to=round_to or 0)

    return rewrite_model(model, wrap)


def channel_pruned_layers(model):
    """The `ChannelPruneWrapper` layers of `model` (nested models included)."""
    return [layer for layer in walk_layers(model) if isinstance(layer, ChannelPruneWrapper)]


def update_channel_masks(wrappers):
    """Advances the pruning step of `wrappers` (one model's) and, where the schedule says so, re-masks each group.

    Called by `kopt.sparsity.UpdatePruningStep` before every training batch. The channels of a group are ranked
    by the norms of their filters summed over the group's producers (masked filters count as zero, so a masked
    channel stays masked), and the lowest `sparsity` of them are masked in every wrapper of the group.

    Args:
        wrappers: the model's `ChannelPruneWrapper`s (see `channel_pruned_layers`).
    """
    wrappers = [w for w in wrappers if w.built]
    if not wrappers:
        return
    step = max(int(ops.convert_to_numpy(wrappers[0].pruning_step)), -1) + 1
    for wrapper in wrappers:
        wrapper.pruning_step.assign(step)
    schedule = wrappers[0].pruning_schedule
    should_prune, sparsity = schedule(ops.convert_to_tensor(step, "int64"))
    if not bool(ops.convert_to_numpy(should_prune)):
        return
    sparsity = float(ops.convert_to_numpy(sparsity))
    scores, members = {}, {}
    norm = wrappers[0].importance
    for wrapper in wrappers:
        if wrapper.output_classes is None:
            continue
        kernel, value = wrapper.effective_weights()[0]
        values = importance_lib.per_output(ops.convert_to_numpy(value), importance_lib.output_axis(wrapper.layer),
                                           norm)
        for c, g, v in zip(wrapper.output_classes, wrapper.output_groups, values):
            if g < 0:
                continue
            scores[c] = scores.get(c, 0.0) + float(v)
            members.setdefault(g, [])
            if c not in members[g]:
                members[g].append(c)
    masked = set()
    for classes in members.values():
        count = len(classes) - _kept_count(len(classes), int(len(classes) * sparsity), wrappers[0].round_to)
        masked.update(sorted(classes, key=lambda c: scores[c])[:count])
    for wrapper in wrappers:  # no layer loses all its channels (possible when a Concatenate feeds the group)
        if wrapper.output_classes is not None:
            own = [c for c, g in zip(wrapper.output_classes, wrapper.output_groups) if g >= 0]
            if own and all(c in masked for c in own):
                masked.discard(max(own, key=lambda c: scores[c]))
    for wrapper in wrappers:
        if wrapper.output_mask is not None:
            wrapper.output_mask.assign(np.array([0.0 if c in masked else 1.0 for c in wrapper.output_classes],
                                                "float32"))
        if wrapper.input_mask is not None:
            wrapper.input_mask.assign(np.array([0.0 if c in masked else 1.0 for c in wrapper.input_classes],
                                               "float32"))


def shrink(model):
    """Removes the channels `prune_channels_low_magnitude` masked: a plain, smaller Keras model.

    The wrappers are taken out, and every channel masked in its group is
    removed from every layer of the group (filters, BatchNormalization
    entries, depthwise kernels, the rows of the layers that read it), as
    `prune_channels` does. The result computes what the masked model computed.

    Args:
        model: a model returned by `prune_channels_low_magnitude` (trained, saved and loaded, ...).

    Returns:
        A new, uncompiled model of the same kind with no kopt classes.

    Example:

    ```python
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32), keras.layers.Dense(2)])
    masked = kopt.structured.prune_channels_low_magnitude(model, kopt.sparsity.ConstantSparsity(0.25, 0))
    masked.compile("adam", "mse")
    masked.fit(np.zeros((8, 8)), np.zeros((8, 2)), callbacks=[kopt.sparsity.UpdatePruningStep()], verbose=0)
    assert kopt.structured.shrink(masked).layers[0].units == 24
    ```
    """
    wrappers = channel_pruned_layers(model)
    if not wrappers:
        raise ValueError("`model` has no ChannelPruneWrapper layers: shrink takes the model "
                         "prune_channels_low_magnitude returned (after training it).")
    masked_positions = {}
    for wrapper in wrappers:
        if wrapper.output_mask is not None:
            mask = ops.convert_to_numpy(wrapper.output_mask)
            masked_positions[wrapper.layer.name] = [k for k, m in enumerate(mask) if m == 0]
    plain = rewrite_model(model, lambda layer: copy_with_values(layer.layer, layer.effective_weights())
                          if isinstance(layer, ChannelPruneWrapper) else copy_layer(layer))
    graph = DependencyGraph(_functional(plain, "model"))
    removed = set()
    for info in graph.layers.values():
        for k in masked_positions.get(info.layer.name, ()):
            removed.add(graph.find(info.outputs[k]))
    return shrunk_model(plain, graph, removed)
