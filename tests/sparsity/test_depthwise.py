"""DepthwiseConv kernels stay dense by default (tfmot's choice); pruning them is opt-in.

(tests/sparsity/test_tfmot_models.py checks the default against tfmot on a digits CNN.)
"""

import ast
import importlib.util
import inspect
import logging
import os

import keras
import numpy as np
import pytest
from keras import layers as L

from kopt import sparsity

SCHEDULE = sparsity.ConstantSparsity(0.6, 0, frequency=1)


def _model():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw2d")(x)
    x = L.SeparableConv2D(8, 3, name="sep")(x)
    block = keras.Sequential([keras.Input((36, 8)), L.DepthwiseConv1D(3, name="dw1d"), L.Conv1D(4, 1, name="c1d")],
                             name="block")
    x = block(L.Reshape((36, 8))(x))
    return keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(x)))


def _fit(model):
    rng = np.random.default_rng(0)
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(rng.random((16, 8, 8, 3)), rng.random((16, 3)), batch_size=8, verbose=0,
              callbacks=[sparsity.UpdatePruningStep()])
    return sparsity.get_sparsity(sparsity.strip_pruning(model))


def _wrapped(model):
    return sorted(w.layer.name for w in sparsity.callbacks.collect_pruned_layers(model))


def test_model_default_leaves_depthwise_dense_and_logs_them(caplog):
    with caplog.at_level(logging.INFO, logger="kopt"):
        pruned = sparsity.prune_low_magnitude(_model(), pruning_schedule=SCHEDULE)
    assert _wrapped(pruned) == ["c1d", "conv", "head", "sep"]
    lines = [r.getMessage() for r in caplog.records if r.name == "kopt"]
    assert len(lines) == 1
    assert "dw2d (DepthwiseConv2D)" in lines[0] and "dw1d (DepthwiseConv1D)" in lines[0]
    assert "prune_depthwise=True" in lines[0]
    stats = _fit(pruned)
    # The stripped model still names the depthwise kernels: they are dense.
    assert stats["dw2d/kernel"] == 0.0 and stats["dw1d/kernel"] == 0.0
    for name in ("conv/kernel", "sep/pointwise_kernel", "c1d/kernel", "head/kernel"):
        assert stats[name] == pytest.approx(0.6, abs=0.01), name


def test_prune_depthwise_true_prunes_them(caplog):
    with caplog.at_level(logging.INFO, logger="kopt"):
        pruned = sparsity.prune_low_magnitude(_model(), pruning_schedule=SCHEDULE, prune_depthwise=True)
    assert not [r for r in caplog.records if r.name == "kopt"]
    assert _wrapped(pruned) == ["c1d", "conv", "dw1d", "dw2d", "head", "sep"]
    stats = _fit(pruned)
    for name in ("dw2d/kernel", "dw1d/kernel", "conv/kernel", "sep/pointwise_kernel"):
        assert stats[name] == pytest.approx(0.6, abs=0.02), name
    # A SeparableConv's depthwise kernel is never pruned (tfmot prunes its pointwise kernel only).
    sep = pruned.get_layer("prune_low_magnitude_sep")
    assert sep.weight_labels == ["pointwise_kernel"]


def test_a_depthwise_layer_wrapped_explicitly_is_pruned_and_kept_in_a_model():
    wrapped = sparsity.prune_low_magnitude(L.DepthwiseConv2D(3, name="dw"), pruning_schedule=SCHEDULE)
    assert isinstance(wrapped, sparsity.PruneLowMagnitude)
    model = keras.Sequential([keras.Input((8, 8, 3)), wrapped, L.Conv2D(4, 1, name="pw"),
                              L.DepthwiseConv2D(3, name="dw_other"), L.Flatten(), L.Dense(3, name="head")])
    again = sparsity.prune_low_magnitude(model, pruning_schedule=SCHEDULE)  # default: other depthwise left dense
    assert _wrapped(again) == ["dw", "head", "pw"]
    stats = _fit(again)
    assert stats["dw/kernel"] == pytest.approx(0.6, abs=0.02)
    assert stats["dw_other/kernel"] == 0.0


def test_list_of_layers(caplog):
    dw, dense = L.DepthwiseConv1D(3, name="dw"), L.Dense(4, name="dense")
    with caplog.at_level(logging.INFO, logger="kopt"):
        result = sparsity.prune_low_magnitude([dw, dense])
    assert result[0] is dw and isinstance(result[1], sparsity.PruneLowMagnitude)
    assert any("dw (DepthwiseConv1D)" in r.getMessage() for r in caplog.records if r.name == "kopt")
    both = sparsity.prune_low_magnitude([dw, dense], prune_depthwise=True)
    assert [w.layer for w in both] == [dw, dense]


class PrunableDepthwise(L.DepthwiseConv2D, sparsity.PrunableLayer):
    def get_prunable_weights(self):
        return [self.kernel]


def test_a_depthwise_subclass_that_says_what_to_prune_is_pruned_by_default():
    model = keras.Sequential([keras.Input((8, 8, 3)), PrunableDepthwise(3, name="custom_dw")])
    assert _wrapped(sparsity.prune_low_magnitude(model)) == ["custom_dw"]


def test_positional_parameters_are_tfmots():
    """tfmot's own signature, read from its source (tfmot is not imported next to Keras 3)."""
    spec = importlib.util.find_spec("tensorflow_model_optimization")
    path = os.path.join(os.path.dirname(spec.origin), "python", "core", "sparsity", "keras", "prune.py")
    with open(path) as f:
        tree = ast.parse(f.read())
    tfmot = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "prune_low_magnitude")
    tfmot_positional = [a.arg for a in tfmot.args.args]
    assert tfmot_positional[:2] == ["to_prune", "pruning_schedule"]  # it is the function we think
    parameters = inspect.signature(sparsity.prune_low_magnitude).parameters.values()
    ours = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert ours == tfmot_positional
    assert [p.name for p in parameters if p.kind is p.KEYWORD_ONLY] == ["prune_depthwise"]
    # A positional call written for tfmot means the same in kopt.
    pruned = sparsity.prune_low_magnitude(L.Dense(8), SCHEDULE, (1, 1), "AVG", None, (2, 4))
    assert pruned.sparsity_m_by_n == (2, 4)
