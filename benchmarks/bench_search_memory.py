"""Memory per trial of kopt.search.CompressionTuner: the process's RSS after each of 20 small trials on digits.

Setting: scikit-learn's bundled digits (`kopt.datasets.load_digits`). The hypermodel is a small CNN,
Conv2D(8|16) -> MaxPool -> Flatten -> Dense(16|32|64) -> Dense(10), trained 2 epochs (batch 64). The compression space
mixes every kind of trial: sparsity 0 or 0.5 (1 pruning epoch), int8 QAT (1 epoch) / int8 PTQ / float16 / dynamic /
float32. Random oracle, seed 1, 5 latency runs per file.

Reported: RSS (VmRSS of /proc/self/status) after each trial, its least-squares slope over trials 5 to N (the first
trials load libraries and warm caches), the growth from trial 5 to N, the peak RSS, and how many traced TensorFlow
functions are still registered after each trial.

    .venv/bin/python benchmarks/bench_search_memory.py [--trials 20]
"""

import argparse
import gc
import os
import resource
import tempfile
import time


def rss_mb():
    """The process's resident set size in MB (VmRSS of /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def slope(values):
    """Least-squares slope of `values` against their index."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


def registered_functions():
    """How many traced functions TensorFlow's eager context still holds (None if TF no longer exposes the count)."""
    try:
        from tensorflow.python.eager.polymorphic_function import atomic_function
    except ImportError:
        return None
    return len(getattr(atomic_function, "RUNTIME_FUNCTION_REFS", {}) or {})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--from-trial", type=int, default=5, help="first trial of the slope (1-based)")
    parser.add_argument("--directory", default=None, help="search folder (default: a temporary one)")
    args = parser.parse_args()

    import keras

    import kopt
    from kopt.datasets import load_digits

    (x, y), (x_val, y_val) = load_digits()

    def build(hp):
        model = keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(hp.Choice("filters", [8, 16]), 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(hp.Choice("units", [16, 32, 64]), activation="relu"),
            keras.layers.Dense(10),
        ])
        model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    memory, functions = [], []

    class Measured(kopt.search.CompressionTuner):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            gc.collect()
            memory.append(rss_mb())
            functions.append(registered_functions())
            print(f"trial {len(memory):2d}: RSS {memory[-1]:.0f} MB, {functions[-1]} TF functions registered",
                  flush=True)

    directory = args.directory or tempfile.mkdtemp(prefix="kopt_search_memory_")
    tuner = Measured(build, compression={"sparsity": [0.0, 0.5], "quantization": ["int8", "float16", "dynamic", None],
                                         "qat": [True, False], "prune_epochs": 1, "qat_epochs": 1},
                     max_trials=args.trials, seed=1, directory=directory, overwrite=True, latency_runs=5)
    start = time.perf_counter()
    tuner.search(x, y, epochs=2, batch_size=64, validation_data=(x_val, y_val), verbose=0)
    seconds = time.perf_counter() - start

    results = tuner.results()
    completed = sum(r.completed for r in results)
    print(f"\n{completed}/{len(results)} trials completed in {seconds:.0f} s.")
    print(f"RSS after each trial (MB): {', '.join(f'{m:.0f}' for m in memory)}")
    first = args.from_trial - 1
    if len(memory) - first >= 3:
        window = memory[first:]
        print(f"RSS slope over trials {args.from_trial}-{len(memory)} (least squares): {slope(window):+.2f} MB per "
              f"trial; growth trial {args.from_trial} -> {len(memory)}: {window[-1] - window[0]:+.0f} MB "
              f"({(window[-1] - window[0]) / (len(window) - 1):+.2f} MB per trial).")
    print(f"Peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB. TF functions registered "
          f"after trial 1: {functions[0]}, after trial {len(functions)}: {functions[-1]}.")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
