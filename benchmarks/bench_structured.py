"""Channel pruning (`kopt.structured.prune_channels`): parameters, MACs and TFLite latency, float and int8.

Three parts, each a table in RESULTS.md:

- `--part latency` (default): MobileNetV2 (alpha 1.0) and ResNet50 at 160x160 (`weights=None`, 10 classes), each
  pruned to half its channels per group (`ratio=0.5`, "l2"). Both models are converted to float32 and to
  post-training int8 TFLite (32 random calibration images); LiteRT's latency (1 thread, XNNPACK) of the pruned file
  over the dense one, timed in interleaved rounds (ratios within one run: the machine is shared).
- `--part families`: every `keras.applications` family (benchmarks/coverage.py's small inputs) at ratio 0.5: groups
  pruned and left (with the reason), parameter / MAC ratios, int8 conversion validated against the pruned model,
  float and int8 latency ratios.
- `--part low_rank`: `kopt.structured.low_rank` on a Dense-heavy digits MLP (64-1024-1024-10) and on the digits
  CNN at several ranks, each fine-tuned: accuracy, MACs and float latency against the trained original.
- `--part digits`: the digits CNN. Dense training, then half its channels removed and fine-tuned with and without
  distillation from the dense model, against the same small architecture trained from scratch for as many epochs
  as the whole pipeline: accuracy, parameters, MACs, latency.

    .venv/bin/python benchmarks/bench_structured.py [--part latency|families|low_rank|digits] [--rounds 7]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kopt  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _files(model, x):
    """Float32 and post-training int8 TFLite files of `model`, and whether the int8 file passed validation."""
    import warnings

    float_file = kopt.convert.to_tflite(model, quantization=None, validate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8_file = kopt.convert.to_tflite(model, representative_data=x, validation_data=x, on_mismatch="warn")
    return float_file, int8_file, bool(int8_file.report.passed)


def _latency_ratios(files, rounds):
    """Median per-round latency ratio pruned / dense, for float and int8, and the dense medians in ms."""
    samples = {key: [] for key in files}
    keys = list(files)
    for key in keys:
        kopt.convert.benchmark(files[key], runs=3, warmup=2)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            samples[key].append(float(kopt.convert.benchmark(files[key], runs=10, warmup=2)))
    ratios = {}
    for mode in ("float", "int8"):
        dense, pruned = samples[("dense", mode)], samples[("pruned", mode)]
        ratios[mode] = statistics.median(p / d for p, d in zip(pruned, dense))
        ratios[mode + "_dense_ms"] = statistics.median(dense)
    return ratios


def measure(model, x, ratio, rounds):
    start = time.time()
    groups = kopt.structured.channel_groups(model)
    pruned = kopt.structured.prune_channels(model, ratio=ratio)
    files, passed = {}, {}
    for label, m in (("dense", model), ("pruned", pruned)):
        files[(label, "float")], files[(label, "int8")], passed[label] = _files(m, x)
    latency = _latency_ratios(files, rounds)
    left = [g for g in groups if not g.prunable]
    return {
        "groups": len(groups), "left": [f"{', '.join(g.producers)}: {g.reason}" for g in left],
        "params": pruned.count_params() / model.count_params(),
        "macs": kopt.structured.count_macs(pruned) / kopt.structured.count_macs(model),
        "dense_macs": kopt.structured.count_macs(model),
        "int8_passed": passed["pruned"], **latency, "seconds": time.time() - start,
    }


def part_latency(args):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 160, 160, 3)).astype("float32")
    print("| model | params pruned/dense | MACs pruned/dense | float latency pruned/dense | int8 latency "
          "pruned/dense | dense float / int8 ms | int8 file validated |")
    print("|---|---|---|---|---|---|---|")
    for name in ("MobileNetV2", "ResNet50"):
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, name)(weights=None, input_shape=(160, 160, 3), classes=10,
                                                  classifier_activation=None)
        r = measure(model, x, args.ratio, args.rounds)
        print(f"| {name} 160x160 | {r['params']:.3f} | {r['macs']:.3f} ({r['dense_macs'] / 1e6:.0f}M dense) | "
              f"{r['float']:.3f} ({1 / r['float']:.2f}x faster) | {r['int8']:.3f} ({1 / r['int8']:.2f}x faster) | "
              f"{r['float_dense_ms']:.1f} / {r['int8_dense_ms']:.1f} | {r['int8_passed']} |", flush=True)


def part_families(args):
    import coverage

    print("| model | groups pruned / all | params | MACs | float latency | int8 latency | int8 validated | "
          "groups left |")
    print("|---|---|---|---|---|---|---|---|")
    names = [n for n in args.only.split(",") if n] or list(coverage.SPECS)
    for name in names:
        model, x = coverage.build(name, samples=16)
        try:
            r = measure(model, x, args.ratio, args.rounds)
        except Exception as error:  # noqa: BLE001 - the table reports failures
            print(f"| {name} | FAIL {type(error).__name__}: {str(error)[:150]} |||||||", flush=True)
            continue
        left = "; ".join(r["left"])
        print(f"| {name} | {r['groups'] - len(r['left'])} / {r['groups']} | {r['params']:.3f} | {r['macs']:.3f} | "
              f"{r['float']:.3f} | {r['int8']:.3f} | {r['int8_passed']} | {left[:200]} |", flush=True)
        keras.backend.clear_session()


def _fit(model, x, y, epochs, teacher=None):
    keras.utils.set_random_seed(0)
    if teacher is None:
        model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        return model
    distiller = kopt.distill.Distiller(teacher, model, teacher_outputs="cache")
    distiller.compile(keras.optimizers.Adam(1e-3), loss=LOSS, metrics=["accuracy"])
    distiller.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return distiller.student


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) == y))


def part_digits(args):
    from kopt.demo import build_cnn

    (x, y), (x_test, y_test) = kopt.datasets.load_digits()
    keras.utils.set_random_seed(0)
    dense = _fit(build_cnn(), x, y, args.epochs)
    results = {"dense": dense}
    pruned = kopt.structured.prune_channels(dense, ratio=args.ratio)
    results["pruned, no fine-tuning"] = pruned
    results["pruned + fine-tuned"] = _fit(kopt.structured.prune_channels(dense, ratio=args.ratio), x, y,
                                          args.finetune_epochs)
    results["pruned + fine-tuned with distillation"] = _fit(
        kopt.structured.prune_channels(dense, ratio=args.ratio), x, y, args.finetune_epochs, teacher=dense)
    scratch = keras.models.clone_model(pruned)  # the small architecture, re-initialized
    results["small architecture from scratch"] = _fit(scratch, x, y, args.epochs + args.finetune_epochs)
    files = {name: kopt.convert.to_tflite(m, quantization=None, validate=False) for name, m in results.items()}
    latency = {name: [] for name in files}
    for r in range(args.rounds):
        for name in files if r % 2 == 0 else list(files)[::-1]:
            latency[name].append(float(kopt.convert.benchmark(files[name], runs=200, warmup=20)))
    dense_ms = latency["dense"]
    print("| model | test accuracy | params | MACs | float latency / dense |")
    print("|---|---|---|---|---|")
    for name, model in results.items():
        ratio = statistics.median(m / d for m, d in zip(latency[name], dense_ms))
        print(f"| {name} | {_accuracy(model, x_test, y_test):.4f} | {model.count_params():,} | "
              f"{kopt.structured.count_macs(model):,} | {ratio:.3f} |", flush=True)


def _timed_ratios(files, baseline, rounds, runs=200):
    latency = {name: [] for name in files}
    for r in range(rounds):
        for name in files if r % 2 == 0 else list(files)[::-1]:
            latency[name].append(float(kopt.convert.benchmark(files[name], runs=runs, warmup=20)))
    return {name: statistics.median(m / d for m, d in zip(latency[name], latency[baseline])) for name in files}


def part_low_rank(args):
    from kopt.demo import build_cnn

    (x, y), (x_test, y_test) = kopt.datasets.load_digits()
    mlp = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(1024, activation="relu"), keras.layers.Dense(1024, activation="relu"),
                            keras.layers.Dense(10)], name="mlp")
    print("| model | factorization | test accuracy | MACs | float latency / original | output error before "
          "fine-tuning |")
    print("|---|---|---|---|---|---|")
    for base in (mlp, build_cnn()):
        keras.utils.set_random_seed(0)
        trained = _fit(base, x, y, args.epochs)
        results = {"original": (trained, None)}
        for label, kwargs in (("energy 0.9", dict(energy=0.9)), ("rank 1/4", dict(rank_ratio=0.25)),
                              ("rank 1/8", dict(rank_ratio=0.125))):
            thin, report = kopt.structured.low_rank(trained, data=x_test, **kwargs)
            results[label] = (_fit(thin, x, y, args.finetune_epochs), report.output_error)
        files = {name: kopt.convert.to_tflite(m, quantization=None, validate=False) for name, (m, _) in results.items()}
        ratios = _timed_ratios(files, "original", args.rounds)
        for name, (model, error) in results.items():
            error_text = "-" if error is None else f"{error:.3f}"
            print(f"| {base.name} | {name} | {_accuracy(model, x_test, y_test):.4f} | "
                  f"{kopt.structured.count_macs(model):,} | {ratios[name]:.3f} | {error_text} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("latency", "families", "low_rank", "digits"), default="latency")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="", help="families: comma-separated names (default: all)")
    parser.add_argument("--epochs", type=int, default=20, help="digits: dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="digits: fine-tuning epochs")
    args = parser.parse_args()
    {"latency": part_latency, "families": part_families, "low_rank": part_low_rank,
     "digits": part_digits}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
