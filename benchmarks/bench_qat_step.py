"""Training-step time of a QAT small CNN vs the same CNN in float: kopt (Keras 3) and tfmot (tf_keras).

Same protocol as bench_pruning_step.py: identical architecture and weights, one process, each
float/QAT pair timed back to back in alternating order, medians of per-round ratios.

    .venv/bin/python benchmarks/bench_qat_step.py [--rounds 15] [--steps 200] [--batch-size 32]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402  (Keras 3 first; tfmot below then binds to tf_keras)
from common import (  # noqa: E402
    compile_all, interleaved_pairs, print_tables, step_benchmark_setup, tf_keras_twin, time_fit)

from kopt import quantization  # noqa: E402
from kopt.demo import build_cnn  # noqa: E402


def main():
    args, x, y, tfmot, tf_keras = step_benchmark_setup(__doc__)
    base = build_cnn()
    models = {
        "Keras 3 float": base,
        "kopt QAT (Keras 3)": quantization.quantize_model(base),
        "tf_keras float": tf_keras_twin(base),
        "tfmot QAT (tf_keras)": tfmot.quantization.keras.quantize_model(tf_keras_twin(base)),
    }
    compile_all(models, keras, tf_keras)

    medians, ratios = interleaved_pairs(
        {"kopt QAT / Keras 3 float": ("Keras 3 float", "kopt QAT (Keras 3)"),
         "tfmot QAT / tf_keras float": ("tf_keras float", "tfmot QAT (tf_keras)")},
        lambda name: time_fit(models[name], x, y, args.batch_size),
        args.rounds)
    print_tables(f"small CNN (kopt.demo.build_cnn), batch {args.batch_size}, {args.steps} steps per fit, "
                 f"{args.rounds} interleaved rounds, medians", medians, ratios, "kopt's QAT ratio <= 1.4")


if __name__ == "__main__":
    main()
