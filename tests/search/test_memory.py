"""A search's memory stays flat: what a trial traced is freed with it (keras-tuner + TensorFlow keep it otherwise)."""

import gc

import keras
import numpy as np
import pytest
from tensorflow.python.eager.polymorphic_function import atomic_function

from kopt.datasets import load_digits
from kopt.search import CompressionTuner
from kopt.search._memory import _gradient_registry, released_traces


def dense(hp):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def cnn(hp):
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(hp.Choice("filters", [8, 16]), 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(hp.Choice("units", [16, 32]), activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def traced_state():
    """(custom gradients in TensorFlow's gradient registry, traced functions registered in the eager context)."""
    custom = sum(str(name).startswith("CustomGradient-") for name in _gradient_registry())
    return custom, len(atomic_function.RUNTIME_FUNCTION_REFS)


def test_a_fit_inside_released_traces_leaves_nothing_behind():
    x, y = np.random.rand(64, 8).astype("float32"), np.random.randint(0, 3, 64)

    def fit():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(x, y, epochs=1, verbose=0)

    with released_traces():
        fit()
    before = traced_state()
    with released_traces():
        fit()
        inside = traced_state()
        assert inside[0] > before[0] and inside[1] > before[1]  # the optimizer's all-reduce: a custom gradient ...
    assert traced_state() == before  # ... gone with the functions it held


@pytest.mark.slow  # four whole trials (slow tier, run by CI)
def test_trials_leave_no_traced_functions_behind(tmp_path):
    (x, y), validation = load_digits()
    after = []

    class Counting(CompressionTuner):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            after.append(traced_state())

    tuner = Counting(dense, compression={"sparsity": [0.0, 0.5], "quantization": ["int8", None], "qat": True,
                                         "prune_epochs": 1, "qat_epochs": 1},
                     max_trials=4, seed=1, directory=tmp_path, latency_runs=2)
    tuner.search(x, y, epochs=1, batch_size=128, validation_data=validation, verbose=0)
    assert all(r.completed for r in tuner.results())
    assert {r.label for r in tuner.results()} >= {"50% sparse, int8 QAT"}, [r.label for r in tuner.results()]
    # Each trial traced 1 to 3 fits and a conversion; without the release, each adds ~30 functions.
    assert after == [after[0]] * 4, after


def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_rss_stays_flat_over_20_trials(tmp_path):
    """The deliverable itself: under 2 MB of RSS per trial over 20 trials (least-squares slope over trials 5-20)."""
    (x, y), validation = load_digits()
    memory = []

    class Measured(CompressionTuner):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            gc.collect()
            memory.append(rss_mb())

    tuner = Measured(cnn, compression={"sparsity": [0.0, 0.5], "quantization": ["int8", "float16", None],
                                       "qat": [True, False], "prune_epochs": 1, "qat_epochs": 1},
                     max_trials=20, seed=1, directory=tmp_path, latency_runs=2)
    tuner.search(x, y, epochs=1, batch_size=128, validation_data=validation, verbose=0)
    assert sum(r.completed for r in tuner.results()) == 20
    window = np.array(memory[4:])
    slope = np.polyfit(np.arange(len(window)), window, 1)[0]
    assert slope < 2.0, f"{slope:+.2f} MB per trial; RSS after each trial: {[round(m) for m in memory]}"
