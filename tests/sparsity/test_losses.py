"""Losses of a pruned layer (activity regularizer, `add_loss`) survive the PruneLowMagnitude wrapper."""

import keras
import numpy as np
import pytest
from keras import layers as L
from keras import ops

from kopt import sparsity

L1 = 0.05
PENALTY = 0.1


@keras.saving.register_keras_serializable(package="kopt_tests")
class PenalizedDense(L.Dense, sparsity.PrunableLayer):
    """A Dense that adds `PENALTY * mean(output ** 2)` with add_loss."""

    def call(self, inputs):
        outputs = super().call(inputs)
        self.add_loss(PENALTY * ops.mean(ops.square(outputs)))
        return outputs

    def get_prunable_weights(self):
        return [self.kernel]


def _model():
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((6,)),
        L.Dense(8, activation="relu", activity_regularizer=keras.regularizers.L1(L1), name="hidden"),
        PenalizedDense(3, name="out"),
    ])


def _numpy_loss(weights, x, y):
    """MSE + the L1 activity penalty (per sample, as Keras normalizes it) + the add_loss penalty."""
    kernel_1, bias_1, kernel_2, bias_2 = weights
    hidden = np.maximum(x @ kernel_1 + bias_1, 0)
    out = hidden @ kernel_2 + bias_2
    return np.mean((out - y) ** 2) + L1 * np.abs(hidden).sum() / len(x) + PENALTY * np.mean(out ** 2)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")


def test_model_losses_are_those_of_the_unwrapped_model(data):
    x, _ = data
    model = _model()
    model(x)
    assert len(model.losses) == 2
    expected = sorted(float(v) for v in model.losses)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=1000))
    assert len(pruned.losses) == 0  # activity losses exist once the model has run, wrapped or not
    for _ in range(3):  # and are replaced, not accumulated, by each call
        pruned(x)
    assert sorted(float(v) for v in pruned.losses) == pytest.approx(expected, rel=1e-6)
    wrappers = sparsity.callbacks.collect_pruned_layers(pruned)
    assert [len(w.layer.losses) for w in wrappers] == [1, 1]  # where the unwrapped layers hold them


def test_training_loss_includes_them_on_the_masked_weights(data):
    x, y = data
    pruned = sparsity.prune_low_magnitude(_model(), pruning_schedule=sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile(keras.optimizers.SGD(0.0), "mse")
    history = pruned.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    masked = [ops.convert_to_numpy(w) for w in sparsity.strip_pruning(pruned).weights]
    assert np.mean(masked[0] == 0) == pytest.approx(0.5)  # the step pruned, then computed the loss
    expected = _numpy_loss(masked, x, y)
    assert _numpy_loss(masked, x, y) - np.mean((np.maximum(x @ masked[0] + masked[1], 0) @ masked[2]
                                                + masked[3] - y) ** 2) > 0.05  # the penalties weigh
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)
    assert pruned.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(expected, rel=1e-5)


def test_unwrapped_and_stripped_models_agree(data, tmp_path):
    x, y = data
    pruned = sparsity.prune_low_magnitude(_model(), pruning_schedule=sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile(keras.optimizers.Adam(1e-2), "mse")
    pruned.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(pruned)
    stripped.compile(loss="mse")
    expected = _numpy_loss([ops.convert_to_numpy(w) for w in stripped.weights], x, y)
    assert stripped.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(expected, rel=1e-5)
    assert pruned.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(expected, rel=1e-5)
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.evaluate(x, y, batch_size=len(x), verbose=0) == pytest.approx(expected, rel=1e-5)


def test_recurrent_layer_activity_regularizer():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 3)).astype("float32")
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, activity_regularizer=keras.regularizers.L2(0.3))])
    expected = 0.3 * np.sum(ops.convert_to_numpy(model(x)) ** 2) / len(x)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.5, begin_step=1000))
    pruned(x)
    assert [float(v) for v in pruned.losses] == pytest.approx([expected], rel=1e-5)


def test_mirrored_strategy_counts_each_replicas_losses_once(data):
    """Each replica's training loss holds its own penalties, as on one device (no merge_call mid-step)."""
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2
    x, y = data
    x, y = np.concatenate([x] * 4), np.concatenate([y] * 4)
    initial = _model().get_weights()

    def train(strategy):
        with strategy.scope():
            model = _model()
            model.set_weights(initial)
            schedule = sparsity.ConstantSparsity(0.5, 0, frequency=2)
            pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
            pruned.compile(keras.optimizers.SGD(0.01), "mse")
        history = pruned.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                             callbacks=[sparsity.UpdatePruningStep()])
        return history.history["loss"]

    # Not the default collective all-reduce: its instance keys clash with other MirroredStrategies of the process.
    mirrored = train(tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice()))
    single = train(tf.distribute.OneDeviceStrategy(devices[0]))
    np.testing.assert_allclose(mirrored, single, rtol=1e-5)
