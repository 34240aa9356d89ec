"""Whole digits models pruned by kopt and by tfmot (its own process): the same weights get masks.

A CNN with a DepthwiseConv2D (tfmot leaves depthwise kernels dense), LSTM /
GRU / SimpleRNN / stacked-cell RNN models (tfmot prunes each cell's kernel and
recurrent_kernel) and a model with a custom layer holding Dense layers (kopt
reaches them by itself; tfmot through the layer's `get_prunable_weights`), built identically in Keras 3 and tf_keras from the same
initial weights, trained on the same digits batches.
"""

import keras
import numpy as np
import pytest

from kopt import sparsity
from kopt.datasets import load_digits
from tests.sparsity.tfmot_models import KINDS, build, inputs_for, run

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
TARGET = 0.75
RUNS = {
    # One step with a frozen model: masks from the initial weights, mask for mask.
    "one_step": dict(schedule="constant", target=TARGET, end_step=0, frequency=1, learning_rate=0.0, epochs=1,
                     batch_size=64, samples=64),
    # Real training: sparsity ramps up to the target at step 40 of 66 (3 epochs of 22 steps).
    "train": dict(schedule="polynomial", target=TARGET, end_step=40, frequency=10, learning_rate=1e-3, epochs=3,
                  batch_size=64, samples=1347),
}


def _initial_weights(kind):
    keras.utils.set_random_seed(7)
    return build(keras, kind).get_weights()


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = load_digits()
    return x, y


@pytest.fixture(scope="module")
def tfmot_masks(digits, tmp_path_factory):
    x, y = digits
    data = {"kinds": np.array(KINDS), "runs": np.array(list(RUNS)), "x": x, "y": y}
    for kind in KINDS:
        for i, w in enumerate(_initial_weights(kind)):
            data[f"weights/{kind}/{i}"] = w
    for name, p in RUNS.items():
        data.update({f"{name}/{k}": v for k, v in p.items()})
    return run(data, tmp_path_factory.mktemp("tfmot_models"))


def _kopt_masks(kind, run_name, x, y):
    p = RUNS[run_name]
    model = build(keras, kind)
    model.set_weights(_initial_weights(kind))
    if p["schedule"] == "constant":
        schedule = sparsity.ConstantSparsity(p["target"], 0, frequency=p["frequency"])
    else:
        schedule = sparsity.PolynomialDecay(0.0, p["target"], 0, p["end_step"], frequency=p["frequency"])
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    optimizer = keras.optimizers.SGD(0.0) if p["learning_rate"] == 0 else keras.optimizers.Adam(p["learning_rate"])
    pruned.compile(optimizer, LOSS)
    pruned.fit(inputs_for(kind, x), y, batch_size=p["batch_size"], epochs=p["epochs"], shuffle=False, verbose=0,
               callbacks=[sparsity.UpdatePruningStep()])
    return {
        f"{kind}:{wrapper.layer.name}/{label}": keras.ops.convert_to_numpy(mask)
        for wrapper in sparsity.callbacks.collect_pruned_layers(pruned)
        for mask, label in zip(wrapper.masks, wrapper.weight_labels)
    }


def _of(masks, run_name, kind):
    prefix = f"{run_name}|{kind}:"
    return {k.split("|", 1)[1]: v for k, v in masks.items() if k.startswith(prefix)}


EXPECTED_PRUNED = {
    "depthwise": {"conv/kernel", "pointwise/kernel", "head/kernel"},  # not depthwise/kernel
    "lstm": {"rnn/lstm_cell/kernel", "rnn/lstm_cell/recurrent_kernel", "head/kernel"},
    "gru": {"rnn/gru_cell/kernel", "rnn/gru_cell/recurrent_kernel", "head/kernel"},
    "simple_rnn": {"rnn/simple_rnn_cell/kernel", "rnn/simple_rnn_cell/recurrent_kernel", "head/kernel"},
    "stacked_rnn": {f"rnn/stacked_rnn_cells/{cell}/{w}" for cell in ("lstm_cell", "gru_cell")
                    for w in ("kernel", "recurrent_kernel")} | {"head/kernel"},
    # A custom layer's Dense kernels, found by kopt, returned by get_prunable_weights to tfmot.
    "custom_block": {"embed/kernel", "block/expand/kernel", "block/project/kernel", "head/kernel"},
}


@pytest.mark.parametrize("kind", KINDS)
def test_same_weights_get_the_same_masks_as_tfmot(kind, tfmot_masks, digits):
    x, y = digits
    n = RUNS["one_step"]["samples"]
    reference = _of(tfmot_masks, "one_step", kind)
    assert set(reference) == {f"{kind}:{name}" for name in EXPECTED_PRUNED[kind]}
    masks = _kopt_masks(kind, "one_step", x[:n], y[:n])
    assert set(masks) == set(reference)
    for name, mask in masks.items():
        assert 1.0 - reference[name].mean() == pytest.approx(TARGET, abs=0.01), name  # tfmot pruned it
        np.testing.assert_array_equal(mask, reference[name], err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_training_reaches_the_same_sparsity_per_weight_as_tfmot(kind, tfmot_masks, digits):
    x, y = digits
    n = RUNS["train"]["samples"]
    reference = _of(tfmot_masks, "train", kind)
    masks = _kopt_masks(kind, "train", x[:n], y[:n])
    assert set(masks) == set(reference) == {f"{kind}:{name}" for name in EXPECTED_PRUNED[kind]}
    for name, mask in masks.items():
        expected = 1.0 - reference[name].mean()
        assert expected == pytest.approx(TARGET, abs=0.01), name
        assert 1.0 - mask.mean() == pytest.approx(expected, abs=1e-9), name
