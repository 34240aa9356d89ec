"""`low_rank`: Dense and Conv2D layers factorized into two thinner layers by SVD, where that saves MACs."""

import dataclasses
import math
import numbers

import keras
import numpy as np

from kopt._keras.clone import copy_layer, rewrite_model, walk_layers
from kopt._keras.nodes import graph_nodes
from kopt.structured.prune_channels import _functional

L = keras.layers


@dataclasses.dataclass
class LowRankRow:
    """One layer in a `low_rank` report: `rank` of `full_rank` kept, MACs before and after, and
    `weight_error`, the relative error of the factorized kernel (`||W - W_r|| / ||W||`), which is the relative
    error of the layer's output for white inputs. `reason` says why a layer was left as it was."""

    layer: str
    kind: str
    rank: int
    full_rank: int
    macs_before: int
    macs_after: int
    weight_error: float
    reason: str = ""


@dataclasses.dataclass
class LowRankReport:
    """What `low_rank` did: `.rows` (one `LowRankRow` per layer considered) and `.output_error`, the relative
    RMS error of the model's outputs before fine-tuning (on `data`, or on standard-normal inputs)."""

    rows: list
    output_error: float

    def __str__(self):
        lines = [f"{'layer':<28} {'kind':<10} {'rank':>11} {'MACs before':>13} {'after':>13} {'weight err':>10}"]
        for r in self.rows:
            rank = f"{r.rank}/{r.full_rank}" if not r.reason else "-"
            tail = f"  left: {r.reason}" if r.reason else ""
            lines.append(f"{r.layer:<28} {r.kind:<10} {rank:>11} {r.macs_before:>13,} {r.macs_after:>13,} "
                         f"{r.weight_error:>10.4f}{tail}")
        before = sum(r.macs_before for r in self.rows)
        after = sum(r.macs_after for r in self.rows)
        lines.append(f"factorized layers' MACs: {before:,} -> {after:,}; model output error {self.output_error:.4f}")
        return "\n".join(lines)


def _rank(singular, rank_ratio, energy):
    if rank_ratio is not None:
        return max(1, int(math.ceil(rank_ratio * len(singular))))
    kept = np.cumsum(singular ** 2) / max(np.sum(singular ** 2), 1e-30)
    return int(np.searchsorted(kept, energy) + 1)


def _positions(shape):
    return int(np.prod(shape[1:-1])) if len(shape) > 2 else 1


def _factorize(layer, in_shape, out_shape, rank_ratio, energy):
    """`(first, second, row)` for a Dense or Conv2D layer, or `(None, None, row)` if it stays."""
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype(np.float64)
    if isinstance(layer, L.Dense) or kernel.shape[:2] == (1, 1):
        kind = "dense" if isinstance(layer, L.Dense) else "1x1"
        matrix = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
        positions = _positions(out_shape)
        before = positions * matrix.size

        def after(rank):
            return positions * rank * sum(matrix.shape)
    else:
        kind = "kxk"
        kh, kw, cin, cout = kernel.shape
        matrix = kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)  # rows (i, c), columns (j, o)
        before = _positions(out_shape) * kh * kw * cin * cout
        mid_width = in_shape[2]  # the k x 1 convolution keeps the width

        def after(rank):
            return out_shape[1] * mid_width * kh * cin * rank + _positions(out_shape) * kw * rank * cout

    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    rank = _rank(s, rank_ratio, energy)
    error = float(np.sqrt(np.sum(s[rank:] ** 2) / max(np.sum(s ** 2), 1e-30)))
    row = LowRankRow(layer.name, kind, rank, len(s), before, after(rank), error)
    if after(rank) >= before:
        row.macs_after, row.reason = before, f"rank {rank} saves no MACs (break-even below {len(s)})"
        return None, None, row
    root = np.sqrt(s[:rank])
    left, right = u[:, :rank] * root, root[:, None] * vt[:rank]
    dtype = layer.dtype_policy
    if kind == "dense":
        first = L.Dense(rank, use_bias=False, name=f"{layer.name}_low_rank", dtype=dtype)
        second = L.Dense.from_config(layer.get_config())
        first.build(in_shape)
        second.build((*in_shape[:-1], rank))
        first.set_weights([left])
        second.set_weights([right] + ([keras.ops.convert_to_numpy(layer.bias)] if layer.use_bias else []))
        return first, second, row
    config = layer.get_config()
    if kind == "1x1":
        first = L.Conv2D(rank, 1, strides=config["strides"], padding=config["padding"], use_bias=False,
                         name=f"{layer.name}_low_rank", dtype=dtype)
        second_config = dict(config, strides=(1, 1), padding="valid")
        first_kernel, second_kernel = left.reshape(1, 1, -1, rank), right.reshape(1, 1, rank, -1)
    else:
        kh, kw, cin, cout = kernel.shape
        dh, dw = config["dilation_rate"]
        first = L.Conv2D(rank, (kh, 1), strides=(config["strides"][0], 1), padding=config["padding"],
                         dilation_rate=(dh, 1), use_bias=False, name=f"{layer.name}_low_rank", dtype=dtype)
        second_config = dict(config, kernel_size=(1, kw), strides=(1, config["strides"][1]), dilation_rate=(1, dw))
        first_kernel = left.reshape(kh, cin, rank)[:, None]  # (kh, 1, cin, rank)
        second_kernel = right.reshape(rank, kw, cout).transpose(1, 0, 2)[None]  # (1, kw, rank, cout)
    second = L.Conv2D.from_config(second_config)
    first.build(in_shape)
    mid_shape = first.compute_output_shape(in_shape)
    second.build(mid_shape)
    first.set_weights([first_kernel])
    second.set_weights([second_kernel] + ([keras.ops.convert_to_numpy(layer.bias)] if layer.use_bias else []))
    return first, second, row


def low_rank(model, rank_ratio=None, energy=0.9, layers=None, data=None):
    """Factorizes Dense and Conv2D layers into two real, thinner layers wherever that saves MACs.

    - Dense and 1x1 Conv2D: `W = U S V^T` truncated to rank r becomes a layer
      of r units (no bias) then the layer itself with r inputs.
    - k x k Conv2D: spatial SVD (Jaderberg et al., 2014): a k x 1 convolution
      to r channels, then a 1 x k one to the layer's filters (strides,
      dilation and padding split between the two).
    The rank is `ceil(rank_ratio * full rank)`, or the smallest that keeps
    `energy` of the squared singular values. A layer whose factorization
    would not lower its MACs (rank above break-even) is left as it is. Both
    new layers are ordinary Keras layers: the file computes the two thin ops,
    never the full kernel. Fine-tune afterwards.

    Args:
        model: a built Sequential or Functional model (not modified).
        rank_ratio: fraction of each layer's full rank to keep, in (0, 1];
            None to choose by `energy`.
        energy: fraction of the squared singular values to keep, in (0, 1].
        layers: names of the layers to consider (default: every Dense and
            groups=1 Conv2D).
        data: inputs to measure the model's output error on (default: 32
            standard-normal samples).

    Returns:
        `(new_model, report)`: a plain Keras model of the same kind, and a
        `LowRankReport` (`print(report)` for the table).

    Example:

    ```python
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10)])
    small, report = kopt.structured.low_rank(model, rank_ratio=0.25)
    assert small.count_params() < model.count_params()
    print(report)
    ```
    """
    functional = _functional(model, "model")
    if rank_ratio is not None and (isinstance(rank_ratio, bool) or not isinstance(rank_ratio, numbers.Real)
                                   or not 0.0 < rank_ratio <= 1.0):
        raise ValueError(f"`rank_ratio` must be a number in (0, 1] (the fraction of the rank kept) or None; got "
                         f"{rank_ratio!r}.")
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0.0 < energy <= 1.0:
        raise ValueError(f"`energy` must be a number in (0, 1], e.g. 0.9; got {energy!r}.")
    names = {layer.name for layer in walk_layers(model)}
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise ValueError(f"`layers` names {unknown}, not layers of the model.")
    shapes = {}
    for op, inputs, outputs in graph_nodes(functional):
        if id(op) not in shapes and inputs and outputs:
            shapes[id(op)] = (tuple(inputs[0].shape), tuple(outputs[0].shape))
    pairs, rows = {}, []

    def factorize(layer):
        eligible = (isinstance(layer, L.Dense) and len(layer.kernel.shape) == 2
                    or isinstance(layer, L.Conv2D) and type(layer) is L.Conv2D and layer.groups == 1
                    and layer.data_format == "channels_last")
        if not eligible or (layers is not None and layer.name not in layers) or id(layer) not in shapes:
            return copy_layer(layer)
        first, second, row = _factorize(layer, *shapes[id(layer)], rank_ratio, energy)
        rows.append(row)
        if first is None:
            return copy_layer(layer)
        pairs[id(first)] = second
        return first

    result = rewrite_model(model, factorize, after_layer=lambda layer: pairs.get(id(layer)))
    x = data if data is not None else np.random.default_rng(0).normal(
        size=(32, *model.inputs[0].shape[1:])).astype(model.inputs[0].dtype)
    expected = np.concatenate([np.ravel(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(model(x))])
    got = np.concatenate([np.ravel(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(result(x))])
    error = float(np.sqrt(np.mean((expected - got) ** 2) / max(np.mean(expected ** 2), 1e-30)))
    return result, LowRankReport(rows, error)
