"""Pruned models save to .keras, load without custom_objects, and resume with the same masks."""

import os

import keras
import numpy as np
from keras import ops

from kopt import sparsity
from kopt.demo import build_cnn

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data():
    rng = np.random.default_rng(0)
    return rng.random((192, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 192)


def _pruned_model():
    keras.utils.set_random_seed(1)
    schedule = sparsity.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=24, frequency=3)
    pruned = sparsity.prune_low_magnitude(build_cnn(), pruning_schedule=schedule)
    pruned.compile(keras.optimizers.Adam(1e-3), LOSS)
    return pruned


def _state(model):
    return {
        f"{n}/{i}": ops.convert_to_numpy(v)
        for n, layer in enumerate(sparsity.callbacks.collect_pruned_layers(model))
        for i, v in enumerate(layer.masks + layer.thresholds + [layer.pruning_step])
    }


def _fit(model, x, y, epochs, initial_epoch=0, callbacks=()):
    model.fit(x, y, batch_size=32, epochs=epochs, initial_epoch=initial_epoch, shuffle=False, verbose=0,
              callbacks=[sparsity.UpdatePruningStep(), *callbacks])


def test_save_load_keeps_masks_step_and_outputs(tmp_path):
    x, y = _data()
    pruned = _pruned_model()
    _fit(pruned, x, y, epochs=2)
    path = os.fspath(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    assert isinstance(loaded.layers[0], sparsity.PruneLowMagnitude)
    assert loaded.layers[0].pruning_schedule == pruned.layers[0].pruning_schedule
    state, loaded_state = _state(pruned), _state(loaded)
    assert int(loaded_state["0/2"]) == 12  # 6 steps x 2 epochs
    for key in state:
        np.testing.assert_array_equal(state[key], loaded_state[key])
    np.testing.assert_array_equal(pruned.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_resume_from_saved_step_equals_uninterrupted_run(tmp_path):
    x, y = _data()
    uninterrupted = _pruned_model()
    _fit(uninterrupted, x, y, epochs=4)

    first = _pruned_model()
    _fit(first, x, y, epochs=2)
    path = os.fspath(tmp_path / "half.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    _fit(resumed, x, y, epochs=4, initial_epoch=2)
    expected, got = _state(uninterrupted), _state(resumed)
    assert int(got["0/2"]) == 24  # the step continued from 12, not from 0
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=key)


def test_model_checkpoint_restart_gives_same_final_masks(tmp_path):
    x, y = _data()
    uninterrupted = _pruned_model()
    _fit(uninterrupted, x, y, epochs=4)

    checkpoint = os.fspath(tmp_path / "epoch_{epoch}.keras")
    crashed = _pruned_model()
    _fit(crashed, x, y, epochs=3, callbacks=[keras.callbacks.ModelCheckpoint(checkpoint)])
    restarted = keras.models.load_model(checkpoint.format(epoch=2))  # restart from the epoch-2 checkpoint
    _fit(restarted, x, y, epochs=4, initial_epoch=2)
    expected, got = _state(uninterrupted), _state(restarted)
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=key)
    stripped = sparsity.get_sparsity(sparsity.strip_pruning(restarted))
    assert all(abs(v - 0.8) < 0.01 for v in stripped.values()), stripped


def test_stripped_model_saves_and_loads_as_plain_keras(tmp_path):
    x, y = _data()
    pruned = _pruned_model()
    _fit(pruned, x, y, epochs=1)
    stripped = sparsity.strip_pruning(pruned)
    path = os.fspath(tmp_path / "stripped.keras")
    stripped.save(path)
    loaded = keras.models.load_model(path)
    assert sparsity.get_sparsity(loaded) == sparsity.get_sparsity(pruned)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)
