"""Shared by the benchmark scripts: the tf_keras twin of the digits CNN and interleaved pair timing."""

import argparse
import os
import statistics
import time


def step_benchmark_setup(doc):
    """Parses --rounds/--steps/--batch-size, imports tfmot (binding it to tf_keras after Keras 3) and makes data.

    Returns:
        `(args, x, y, tfmot, tf_keras)` with random digits-shaped data for `args.steps` batches.
    """
    import keras
    import numpy as np

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200, help="training steps per timed fit")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow_model_optimization as tfmot
    import tf_keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    return args, rng.random((n, 8, 8, 1)).astype("float32"), rng.integers(0, 10, n), tfmot, tf_keras


def compile_all(models, keras, tf_keras):
    """Compiles each model with Adam and sparse categorical cross-entropy of its own Keras."""
    for name, model in models.items():
        lib = keras if "Keras 3" in name else tf_keras
        model.compile(lib.optimizers.Adam(1e-3), lib.losses.SparseCategoricalCrossentropy(from_logits=True))


def tf_keras_twin(model):
    """The digits CNN (kopt.demo.build_cnn) rebuilt in tf_keras, with the same weights."""
    import tf_keras

    L = tf_keras.layers
    twin = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(model.layers[-2].units, activation="relu"),
        L.Dense(10),
    ])
    twin.set_weights(model.get_weights())
    return twin


def time_fit(model, x, y, batch_size, callbacks=()):
    """Wall and CPU milliseconds per training step of one epoch of `model.fit`."""
    steps = -(-len(x) // batch_size)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks))
    return (time.perf_counter() - wall) / steps * 1e3, (time.process_time() - cpu) / steps * 1e3


def interleaved_pairs(pairs, measure, rounds):
    """Times each (baseline, candidate) pair back to back, alternating the order, for `rounds` rounds.

    Args:
        pairs: {label: (baseline name, candidate name)}.
        measure: callable(name) -> (wall ms, cpu ms).
        rounds: number of rounds (after one untimed warm-up of every name).

    Returns:
        `(medians, ratios)`: medians[name] = (wall, cpu) medians; ratios[label] = (wall, cpu) medians of
        the per-round candidate / baseline ratios.
    """
    names = [n for pair in pairs.values() for n in pair]
    for name in names:
        measure(name)
    samples = {name: [] for name in names}
    labels = list(pairs)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            pair = pairs[label] if r % 2 == 0 else pairs[label][::-1]
            for name in pair:
                samples[name].append(measure(name))
    medians = {n: tuple(statistics.median(s[i] for s in samples[n]) for i in (0, 1)) for n in names}
    ratios = {
        label: tuple(statistics.median(c[i] / b[i] for b, c in zip(samples[base], samples[cand])) for i in (0, 1))
        for label, (base, cand) in pairs.items()
    }
    return medians, ratios


def print_tables(title, medians, ratios, target):
    print(title)
    print("| model | wall ms / step | CPU ms / step |")
    print("|---|---|---|")
    for name, (wall, cpu) in medians.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    print("\n| candidate / baseline step time (median of per-round ratios) | wall | CPU |")
    print("|---|---|---|")
    for label, (wall, cpu) in ratios.items():
        print(f"| {label} | {wall:.3f} | {cpu:.3f} |")
    print(f"\ntarget: {target}")
