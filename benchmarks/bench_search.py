"""A 20-trial compression search on digits with kopt.search.CompressionTuner, against `kopt demo`'s int8 file.

Setting: scikit-learn's bundled digits (`kopt.datasets.load_digits`: 1347 training, 450 validation images).
The hypermodel is the demo's CNN family: Conv2D(f1) -> Conv2D(f2) -> MaxPool -> Flatten -> Dense(units) -> Dense(10),
with f1 in {8, 16}, f2 in {16, 32}, units in {32, 64, 128}, Adam learning rate in {1e-3, 3e-3}, trained 20 epochs
(batch 32). The compression space is kopt's default (sparsity 0 to 0.9, int8 QAT / int8 PTQ / float16 / dynamic /
float32), with 5 pruning epochs and 3 QAT epochs. Random oracle, seed 1.

In the same process, `kopt.demo.run()` (20 epochs, 80% pruning, 5 QAT epochs) gives the reference int8 file.
Reported: every trial (the front marked), the front, whether it holds a file at least as accurate as the demo's and
smaller, wall time per trial, and memory: the process's RSS after each trial and its peak.

    .venv/bin/python benchmarks/bench_search.py [--trials 20] [--plot benchmarks/search_digits_front.png]
"""

import argparse
import os
import resource
import statistics
import tempfile
import time


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--plot", default=None, help="where to write the figure (e.g. benchmarks/search_digits_front.png)")
    parser.add_argument("--directory", default=None, help="search folder (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs = 2, 1

    import keras

    import kopt
    from kopt.datasets import load_digits

    (x, y), (x_val, y_val) = load_digits()
    start = time.perf_counter()
    demo = kopt.demo.run(epochs=args.epochs, prune_epochs=max(1, args.epochs // 2), qat_epochs=max(1, args.epochs // 4),
                         output_dir=None, verbose=0)
    demo_seconds = time.perf_counter() - start

    def build(hp):
        model = keras.Sequential([
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(hp.Choice("conv1", [8, 16]), 3, padding="same", activation="relu"),
            keras.layers.Conv2D(hp.Choice("conv2", [16, 32]), 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(hp.Choice("units", [32, 64, 128]), activation="relu"),
            keras.layers.Dense(10),
        ])
        model.compile(keras.optimizers.Adam(hp.Choice("learning_rate", [1e-3, 3e-3])),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    memory = []

    class Measured(kopt.search.CompressionTuner):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            memory.append(rss_mb())

    directory = args.directory or tempfile.mkdtemp(prefix="kopt_search_")
    tuner = Measured(build, compression={"prune_epochs": 5 if not args.quick else 1,
                                         "qat_epochs": 3 if not args.quick else 1},
                     max_trials=args.trials, seed=1, directory=directory, overwrite=True)
    start = time.perf_counter()
    tuner.search(x, y, epochs=args.epochs, batch_size=32, validation_data=(x_val, y_val), verbose=1)
    search_seconds = time.perf_counter() - start

    results = tuner.results()
    front = tuner.pareto_front()
    completed = [r for r in results if r.completed]
    print("\n## Front (accuracy of the file, bytes, latency)\n")
    print("| trial | conv1 | conv2 | units | lr | compression | accuracy | bytes | gzipped | latency ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(front, key=lambda r: r.metrics["size"]):
        h, m = r.hyperparameters, r.metrics
        print(f"| {r.trial_id} | {h['conv1']} | {h['conv2']} | {h['units']} | {h['learning_rate']:g} | {r.label} | "
              f"{m['accuracy']:.4f} | {m['size']:,} | {m['size_gzip']:,} | {m['latency']:.4f} |")
    better = [r for r in front if r.metrics["accuracy"] >= demo["int8_accuracy"] and
              r.metrics["size"] < demo["bytes"]["int8"]]
    print(f"\n`kopt demo` int8 file (same run): accuracy {demo['int8_accuracy']:.4f}, {demo['bytes']['int8']:,} bytes "
          f"({demo['gzip_bytes']['int8']:,} gzipped), {demo['latency_ms']['int8']:.4f} ms; {demo_seconds:.0f} s.")
    if better:
        smallest = min(better, key=lambda r: r.metrics["size"])
        print(f"Front files at least as accurate as the demo's and smaller: {len(better)}; smallest: trial "
              f"{smallest.trial_id} ({smallest.label}), accuracy {smallest.metrics['accuracy']:.4f}, "
              f"{smallest.metrics['size']:,} bytes = {smallest.metrics['size'] / demo['bytes']['int8']:.2f}x the demo's.")
    else:
        print("No front file is at least as accurate as the demo's and smaller.")
    seconds = [r.seconds for r in results if r.seconds is not None]
    print(f"\n{len(completed)}/{len(results)} trials completed in {search_seconds:.0f} s; wall time per trial: median "
          f"{statistics.median(seconds):.1f} s, min {min(seconds):.1f} s, max {max(seconds):.1f} s.")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"RSS after each trial (MB): {', '.join(f'{m:.0f}' for m in memory)}")
    if len(memory) >= 10:
        print(f"RSS growth from trial 5 to trial {len(memory)}: {memory[-1] - memory[4]:+.0f} MB "
              f"({(memory[-1] - memory[4]) / (len(memory) - 5):+.1f} MB per trial); peak RSS {peak:.0f} MB.")
    else:
        print(f"Peak RSS {peak:.0f} MB.")
    # Baseline in the same process: the same hypermodel trained with plain Keras (one epoch), then
    # keras.backend.clear_session(), as many times as there were trials: how much one bare `fit` keeps.
    import gc

    import keras_tuner

    baseline = []
    for i in range(len(memory)):
        keras.backend.clear_session()
        gc.collect()
        hp = keras_tuner.HyperParameters()
        build(hp).fit(x, y, epochs=1, batch_size=32, verbose=0)
        gc.collect()
        baseline.append(rss_mb())
    if len(baseline) >= 10:
        print(f"Baseline, plain Keras fit + clear_session, RSS growth from fit 5 to fit {len(baseline)}: "
              f"{(baseline[-1] - baseline[4]) / (len(baseline) - 5):+.1f} MB per fit.")
    if args.plot:
        tuner.plot_pareto(args.plot, title=f"digits: {len(completed)} trials, Pareto front in red")
        print(f"Figure: {args.plot}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
