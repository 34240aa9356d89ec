"""Training-step time of a pruned small CNN vs the same CNN unpruned: kopt (Keras 3) and tfmot (tf_keras).

All four models (Keras 3 dense / kopt-pruned, tf_keras dense / tfmot-pruned) have the same
architecture (kopt.demo.build_cnn) and the same initial weights, and are timed in one process,
interleaved round by round; each figure is the median over rounds. Ratios are computed within
a round, so the machine's load cancels out.

    .venv/bin/python benchmarks/bench_pruning_step.py [--rounds 15] [--steps 200] [--batch-size 32]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (Keras 3 first; tfmot below then binds to tf_keras)
import numpy as np  # noqa: E402

from kopt import sparsity  # noqa: E402
from kopt.demo import build_cnn  # noqa: E402


def tf_keras_twin(model):
    """The same CNN in tf_keras, with the same weights."""
    import tf_keras

    L = tf_keras.layers
    twin = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(64, activation="relu"),
        L.Dense(10),
    ])
    twin.set_weights(model.get_weights())
    return twin


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    x = rng.random((n, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, n)

    base = build_cnn()
    schedule_args = dict(target_sparsity=0.8, begin_step=0, frequency=100)
    models = {
        "kopt dense (Keras 3)": (base, []),
        "kopt pruned (Keras 3)": (
            sparsity.prune_low_magnitude(base, pruning_schedule=sparsity.ConstantSparsity(**schedule_args)),
            [sparsity.UpdatePruningStep()],
        ),
        "dense (tf_keras)": (tf_keras_twin(base), []),
        "tfmot pruned (tf_keras)": (
            tfmot.sparsity.keras.prune_low_magnitude(
                tf_keras_twin(base), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(**schedule_args)
            ),
            [tfmot.sparsity.keras.UpdatePruningStep()],
        ),
    }
    for name, (model, _) in models.items():
        is_keras3 = "Keras 3" in name
        optimizer = keras.optimizers.Adam(1e-3) if is_keras3 else tf_keras.optimizers.Adam(1e-3)
        loss = (keras.losses if is_keras3 else tf_keras.losses).SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer, loss)

    def timed_fit(name):
        model, callbacks = models[name]
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        return ((time.perf_counter() - wall) / args.steps * 1e3, (time.process_time() - cpu) / args.steps * 1e3)

    names = list(models)
    pairs = [(names[0], names[1]), (names[2], names[3])]
    for name in names:  # warm-up: tracing and first-call costs
        timed_fit(name)
    wall = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for r in range(args.rounds):
        # Each dense/pruned pair is timed back to back, in alternating order, so both see the same load.
        for pair in pairs[r % 2:] + pairs[:r % 2]:
            for name in (pair if r % 2 == 0 else pair[::-1]):
                w, c = timed_fit(name)
                wall[name].append(w)
                cpu[name].append(c)

    def ratio(series, pruned, dense):
        return statistics.median(p / d for p, d in zip(series[pruned], series[dense]))

    print(f"small CNN (kopt.demo.build_cnn), batch {args.batch_size}, {args.steps} steps per fit, "
          f"{args.rounds} interleaved rounds, medians")
    print("| model | wall ms / step | CPU ms / step |")
    print("|---|---|---|")
    for name in names:
        print(f"| {name} | {statistics.median(wall[name]):.2f} | {statistics.median(cpu[name]):.2f} |")
    print("\n| pruned / dense step time (median of per-round ratios) | wall | CPU |")
    print("|---|---|---|")
    for label, (dense, pruned) in (("kopt (Keras 3)", pairs[0]), ("tfmot (tf_keras)", pairs[1])):
        print(f"| {label} | {ratio(wall, pruned, dense):.3f} | {ratio(cpu, pruned, dense):.3f} |")
    print("\ntarget: kopt's ratio <= 1.10 and no worse than tfmot's")


if __name__ == "__main__":
    main()
