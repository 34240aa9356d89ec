"""LSTM / GRU / SimpleRNN / RNN(cells) pruning: the recurrent loop runs on `weight * mask`.

The wrapper substitutes `kernel * mask` and `recurrent_kernel * mask` for the
cell's variables while the layer runs (a keras.StatelessScope); these tests
check that the substitution reaches every step of the recurrent loop, eagerly
and compiled, that gradients flow through it, and that fit, .keras files and
strip_pruning keep it.
"""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers as L
from keras import ops

from kopt import sparsity
from kopt.datasets import load_digits

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

RNNS = {
    "LSTM": lambda: L.LSTM(6, name="rnn"),
    "GRU": lambda: L.GRU(6, name="rnn"),
    "GRU_reset_before": lambda: L.GRU(6, reset_after=False, name="rnn"),
    "SimpleRNN": lambda: L.SimpleRNN(6, name="rnn"),
    "RNN_LSTMCell": lambda: L.RNN(L.LSTMCell(6), name="rnn"),
    "stacked": lambda: L.RNN([L.LSTMCell(6), L.SimpleRNNCell(5)], name="rnn"),
    "return_sequences": lambda: L.LSTM(6, return_sequences=True, go_backwards=True, name="rnn"),
}


def _model(factory):
    return keras.Sequential([keras.Input((7, 4)), factory()])


def _random_masks(wrapper, rng):
    masks = [(rng.random(m.shape) < 0.5).astype("float32") for m in wrapper.masks]
    for variable, value in zip(wrapper.masks, masks):
        variable.assign(value)
    return masks


def _with_values(model, substitutes):
    """A plain copy of `model` whose weights `substitutes[i]` replace (by position in get_weights)."""
    copy = keras.models.clone_model(model)
    weights = model.get_weights()
    for i, value in substitutes.items():
        weights[i] = value
    copy.set_weights(weights)
    return copy


@pytest.mark.parametrize("name", sorted(RNNS))
def test_every_step_of_the_loop_sees_the_masked_weights(name):
    rng = np.random.default_rng(0)
    model = _model(RNNS[name])
    pruned = sparsity.prune_low_magnitude(model)
    wrapper = pruned.layers[0]
    assert len(wrapper.masks) == (4 if name == "stacked" else 2)  # kernel and recurrent_kernel of each cell
    masks = _random_masks(wrapper, rng)
    x = rng.normal(size=(5, 7, 4)).astype("float32")

    positions = {id(w): i for i, w in enumerate(wrapper.layer.weights)}
    values = model.get_weights()
    masked_values = {positions[id(w)]: values[positions[id(w)]] * m for w, m in zip(wrapper._pruned_weights, masks)}
    expected = _with_values(model, masked_values).predict(x, verbose=0)
    unmasked = model.predict(x, verbose=0)
    assert np.abs(expected - unmasked).max() > 1e-2  # the masks matter
    np.testing.assert_allclose(pruned.predict(x, verbose=0), expected, atol=1e-6)  # compiled
    np.testing.assert_allclose(ops.convert_to_numpy(pruned(x)), expected, atol=1e-6)  # eager
    # The layer's own variables were not written by the calls.
    for a, b in zip(values, [ops.convert_to_numpy(w) for w in wrapper.layer.weights]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "SimpleRNN"])
def test_gradients_flow_through_the_mask_into_the_variables(name):
    rng = np.random.default_rng(1)
    pruned = sparsity.prune_low_magnitude(_model(RNNS[name]))
    wrapper = pruned.layers[0]
    masks = _random_masks(wrapper, rng)
    x = rng.normal(size=(5, 7, 4)).astype("float32")
    variables = wrapper._pruned_weights
    with tf.GradientTape() as tape:
        loss = ops.sum(ops.square(pruned(x, training=False)))
    gradients = tape.gradient(loss, [v.value for v in variables])
    for variable, gradient, mask in zip(variables, gradients, masks):
        gradient = ops.convert_to_numpy(gradient)
        assert np.all(gradient[mask == 0] == 0), variable.path
        assert np.mean(gradient[mask == 1] != 0) > 0.9, variable.path


@pytest.fixture(scope="module")
def digit_rows():
    (x, y), (x_test, y_test) = load_digits()
    return x.reshape(-1, 8, 8), y, x_test.reshape(-1, 8, 8), y_test


@pytest.mark.parametrize("cls", [L.LSTM, L.GRU, L.SimpleRNN])
def test_fit_reaches_the_target_then_saves_loads_and_strips(cls, digit_rows, tmp_path):
    x, y, x_test, y_test = digit_rows
    model = keras.Sequential([keras.Input((8, 8)), cls(24, name="rnn"), L.Dense(10, name="head")])
    steps = int(np.ceil(len(x) / 64))  # 22
    schedule = sparsity.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=3 * steps - 6, frequency=10)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(keras.optimizers.Adam(1e-2), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=64, epochs=4, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    cell = pruned.layers[0].layer.cell.name
    stats = sparsity.get_sparsity(pruned)
    assert set(stats) == {f"rnn/{cell}/kernel", f"rnn/{cell}/recurrent_kernel", "head/kernel"}
    for key, value in stats.items():
        assert value == pytest.approx(0.8, abs=0.005), key
    accuracy = pruned.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.6  # 10 classes: it learned through the masked recurrence

    path = os.fspath(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[0], sparsity.PruneLowMagnitude)
    for a, b in zip(pruned.layers[0].masks, loaded.layers[0].masks):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0))

    stripped = sparsity.strip_pruning(loaded)
    assert [type(layer) for layer in stripped.layers] == [cls, L.Dense]
    assert sparsity.get_sparsity(stripped) == pytest.approx(stats)
    np.testing.assert_allclose(stripped.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-5)
    biases = [w for w in stripped.layers[0].weights if w.name == "bias"]
    assert np.mean(ops.convert_to_numpy(biases[0]) == 0) < 0.5  # biases are not pruned (tfmot neither)


def test_recurrent_dropout_state_is_carried_out_of_the_wrapper():
    rng = np.random.default_rng(2)
    model = _model(lambda: L.LSTM(6, dropout=0.3, recurrent_dropout=0.3, name="rnn"))
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.5, 0, frequency=1))
    seeds = [v for v in pruned.layers[0].layer.non_trainable_variables if "seed" in v.path]
    assert seeds
    before = [ops.convert_to_numpy(v).copy() for v in seeds]
    pruned.compile("adam", "mse")
    pruned.fit(rng.normal(size=(16, 7, 4)), rng.normal(size=(16, 6)), batch_size=8, verbose=0,
               callbacks=[sparsity.UpdatePruningStep()])
    after = [ops.convert_to_numpy(v) for v in seeds]
    assert any(np.any(a != b) for a, b in zip(before, after))  # the seed advanced: new dropout masks each step
    assert sparsity.get_sparsity(pruned)["rnn/lstm_cell/kernel"] == pytest.approx(0.5, abs=0.01)


def test_keras_masking_reaches_the_wrapped_rnn():
    tokens = keras.Input((6,), dtype="int32")
    hidden = L.LSTM(5, name="lstm")(L.Embedding(20, 8, mask_zero=True, name="embed")(tokens))
    model = keras.Model(tokens, L.Dense(2, name="head")(hidden))
    unmasked = keras.Model(tokens, model.get_layer("head")(model.get_layer("lstm")(
        L.Embedding(20, 8, name="embed2")(tokens))))
    unmasked.get_layer("embed2").set_weights(model.get_layer("embed").get_weights())
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 5, 0, 0, 0, 0]])
    assert np.abs(model.predict(x, verbose=0) - unmasked.predict(x, verbose=0)).max() > 1e-3  # masking matters
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=1000))
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@keras.saving.register_keras_serializable(package="kopt_tests")
class PrunableCell(L.SimpleRNNCell, sparsity.PrunableLayer):
    def get_prunable_weights(self):
        return [self.recurrent_kernel]


@keras.saving.register_keras_serializable(package="kopt_tests")
class OtherCell(L.Layer):
    """The minimal cell of Keras's RNN guide: not one of the cells kopt (and tfmot) know."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")

    def call(self, inputs, states):
        output = ops.matmul(inputs, self.kernel) + states[0]
        return output, [output]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_custom_cells(caplog):
    custom = keras.Sequential([keras.Input((7, 4)), L.RNN(PrunableCell(6, name="mine"), name="rnn")])
    pruned = sparsity.prune_low_magnitude(custom)
    assert pruned.layers[0].weight_labels == ["mine/recurrent_kernel"]  # what the cell asks for, only

    unsupported = keras.Sequential([keras.Input((7, 4)), L.RNN(OtherCell(6), name="other")])
    with caplog.at_level(logging.INFO, logger="kopt"):
        kept = sparsity.prune_low_magnitude(unsupported)
    assert type(kept.layers[0]) is L.RNN
    assert any("other (RNN)" in r.getMessage() for r in caplog.records if r.name == "kopt")
    with pytest.raises(ValueError, match="RNN cell"):
        sparsity.prune_low_magnitude(L.RNN(OtherCell(6)))
