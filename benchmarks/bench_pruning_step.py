"""Training-step time of a pruned small CNN vs the same CNN unpruned: kopt (Keras 3) and tfmot (tf_keras).

All four models (Keras 3 dense / kopt-pruned, tf_keras dense / tfmot-pruned) have the same
architecture (kopt.demo.build_cnn) and the same initial weights, and are timed in one process;
each dense/pruned pair is timed back to back in alternating order, and each ratio is the median
of per-round ratios, so the machine's load cancels out.

    .venv/bin/python benchmarks/bench_pruning_step.py [--rounds 15] [--steps 200] [--batch-size 32]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402  (Keras 3 first; tfmot below then binds to tf_keras)
from common import (  # noqa: E402
    compile_all, interleaved_pairs, print_tables, step_benchmark_setup, tf_keras_twin, time_fit)

from kopt import sparsity  # noqa: E402
from kopt.demo import build_cnn  # noqa: E402


def main():
    args, x, y, tfmot, tf_keras = step_benchmark_setup(__doc__)
    base = build_cnn()
    schedule_args = dict(target_sparsity=0.8, begin_step=0, frequency=100)
    models = {
        "Keras 3 dense": (base, []),
        "kopt pruned (Keras 3)": (
            sparsity.prune_low_magnitude(base, pruning_schedule=sparsity.ConstantSparsity(**schedule_args)),
            [sparsity.UpdatePruningStep()]),
        "tf_keras dense": (tf_keras_twin(base), []),
        "tfmot pruned (tf_keras)": (
            tfmot.sparsity.keras.prune_low_magnitude(
                tf_keras_twin(base), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(**schedule_args)),
            [tfmot.sparsity.keras.UpdatePruningStep()]),
    }
    compile_all({name: model for name, (model, _) in models.items()}, keras, tf_keras)

    medians, ratios = interleaved_pairs(
        {"kopt pruned / Keras 3 dense": ("Keras 3 dense", "kopt pruned (Keras 3)"),
         "tfmot pruned / tf_keras dense": ("tf_keras dense", "tfmot pruned (tf_keras)")},
        lambda name: time_fit(models[name][0], x, y, args.batch_size, models[name][1]),
        args.rounds)
    print_tables(f"small CNN (kopt.demo.build_cnn), batch {args.batch_size}, {args.steps} steps per fit, "
                 f"{args.rounds} interleaved rounds, medians", medians, ratios,
                 "kopt's ratio <= 1.10 and no worse than tfmot's")


if __name__ == "__main__":
    main()
