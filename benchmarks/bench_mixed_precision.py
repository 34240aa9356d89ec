"""Automatic mixed precision: how far keeping the int8-sensitive layers float brings each model's int8 file back
to its Keras model, and what that costs in size and latency.

For each model, `kopt.analysis.auto_mixed_precision` ranks the layers with `kopt.analysis.sensitivity`, then keeps
the first 1, 2, 4 ... of them float until a file meets the target, and bisects down to the fewest that do (at most
`--max-steps` files). The
table gives the all-int8 file and the chosen file: output SQNR against the Keras model on held samples (and top-1
accuracy where there are labels), size, and LiteRT latency (1 thread, every step's file timed in alternation in one
run, so the ratio holds on a shared machine).

Models (nothing downloaded; random weights unless said):
- digits: a small CNN trained on scikit-learn's digits (8 epochs), then a dead hidden unit given a large outgoing
  weight in the last Dense (no float change): per-tensor int8 of that Dense loses real accuracy. Target: at most
  1 point of accuracy lost.
- EfficientNetV2B0 and MobileNetV3Small (`keras.applications`, weights=None, built and briefly trained as the
  coverage benchmark does: 64x64 / 32x32, 10 classes, random images): their post-training int8 files agree with them
  at 13 and 37 dB. Targets: 25 and 45 dB.
- BERT-tiny-sized and ViT-Ti-sized (12 layers, 224x224) from bench_transformer.py, one epoch on random data: their
  int8 files agree at 25.5 and 9 dB. Targets: 35 and 20 dB.

    .venv/bin/python benchmarks/bench_mixed_precision.py [--models digits EfficientNetV2B0 MobileNetV3Small bert vit]
        [--max-steps 16] [--samples 64]
    .venv/bin/python benchmarks/bench_mixed_precision.py --models EfficientNetV2B0 --keep-float '.*_activation' ...
    .venv/bin/python benchmarks/bench_mixed_precision.py --int16
"""

import argparse
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kopt import analysis  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def trained_digits_cnn():
    """A small CNN trained on scikit-learn's digits (8 epochs, seed 0), and the digits splits."""
    from kopt.datasets import load_digits

    (x_train, y_train), (x_test, y_test) = load_digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
                              keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(64, activation="relu", name="hidden"),
                              keras.layers.Dense(10, name="logits")], name="digits_cnn")
    model.compile("adam", LOSS, metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=32, verbose=0)
    return model, (x_train, y_train), (x_test, y_test)


def digits(samples):
    model, (x_train, y_train), (x_test, y_test) = trained_digits_cnn()
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, 0], bias[0] = -1.0, -1.0  # hidden unit 0 never fires (inputs >= 0)
    model.get_layer("hidden").set_weights([kernel, bias])
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[0, :] = 40.0  # ... so this changes no float output, but sets the int8 scale of the whole kernel
    model.get_layer("logits").set_weights([kernel, bias])
    x = np.concatenate([x_train[:256], x_test])
    y = np.concatenate([y_train[:256], y_test])
    return model, (x, y), dict(max_drop=0.01, max_samples=256)


def application(name, samples):
    """The keras.applications model as the coverage benchmark builds it (random weights, 64x64 for the EfficientNets,
    4 epochs on random images so the network's outputs vary), and its images."""
    from coverage import build

    model, x = build(name, samples=2 * samples)
    return model, x, dict(min_sqnr=TARGETS[name], max_samples=samples)


def transformer(name, samples):
    """bench_transformer.py's BERT-tiny-sized classifier or ViT-Ti-sized model, fit one epoch on random data."""
    import bench_transformer

    model, data = bench_transformer.bert_tiny() if name == "bert" else bench_transformer.vit_tiny()
    x, y = data(2 * samples)
    model.compile(keras.optimizers.Adam(1e-4), LOSS)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return model, x, dict(min_sqnr=TARGETS[name], max_samples=samples)


# Targets: about 10 dB above each all-int8 file (RESULTS.md's coverage and transformer tables).
TARGETS = {"EfficientNetV2B0": 25, "MobileNetV3Small": 45, "vit": 20, "bert": 35}


def activation_outlier(samples):
    """A digits CNN (trained 8 epochs) whose 'hidden' unit 0 outputs values 300x the others' and that 'logits'
    ignores: no float change, but int8's one scale for that tensor rounds the other units to a few levels."""
    fresh, (x_train, _), (x_test, y_test) = trained_digits_cnn()
    kernel, bias = fresh.get_layer("hidden").get_weights()
    kernel[:, 0] = np.abs(kernel[:, 0]) * 300.0
    fresh.get_layer("hidden").set_weights([kernel, bias])
    kernel, bias = fresh.get_layer("logits").get_weights()
    kernel[0, :] = 0.0
    fresh.get_layer("logits").set_weights([kernel, bias])
    return fresh, x_train[:256], (x_test, y_test)


def compare_sets(model, calibration, held, sets):
    """Converts `model` with each `{label: to_tflite kwargs}` and prints SQNR, accuracy, size and latency."""
    from kopt import convert
    from kopt.convert.mixed_precision import interleaved_latency

    x, y = held if isinstance(held, tuple) else (held, None)
    files = {label: convert.to_tflite(model, representative_data=calibration, validation_data=x, on_mismatch="warn",
                                      **kwargs) for label, kwargs in sets.items()}
    latencies = interleaved_latency(list(files.values()), {model.inputs[0].name: tuple(x.shape[1:])})
    print("\n| file | SQNR vs Keras | accuracy | bytes | latency ms (1 thread) |\n|---|---|---|---|---|")
    for (label, tflite), latency in zip(files.items(), latencies):
        accuracy = "-" if y is None else f"{convert.evaluate(tflite, x, y):.4f}"
        print(f"| {label} | {tflite.report.outputs[0].sqnr_db:.1f} dB | {accuracy} | {len(tflite):,} | "
              f"{latency:.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "EfficientNetV2B0", "MobileNetV3Small", "bert", "vit"])
    parser.add_argument("--max-steps", type=int, default=16)
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (and as many held)")
    parser.add_argument("--keep-float", nargs="+", metavar="REGEX",
                        help="instead of the search: convert each model with each of these keep_float patterns")
    parser.add_argument("--int16", action="store_true",
                        help="instead: a digits CNN with an activation outlier, int8 against int16 activations and "
                             "float for the two layers that touch it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("absl").setLevel(logging.ERROR)
    if args.int16:
        model, calibration, held = activation_outlier(args.samples)
        layers = ["hidden", "logits"]
        compare_sets(model, calibration, held, {"all int8": {}, "int16 activations: hidden, logits":
                                                 {"int16_activations": layers},
                                                 "float: hidden, logits": {"keep_float": layers},
                                                 "quantization='int16x8' (all int16)": {"quantization": "int16x8"}})
        return
    rows = []
    for name in args.models:
        if name == "digits":
            model, data, target = digits(args.samples)
        elif name in ("vit", "bert"):
            model, data, target = transformer(name, args.samples)
        else:
            model, data, target = application(name, args.samples)
        if args.keep_float:
            x = data[0] if isinstance(data, tuple) else data
            calibration, held = x[:target["max_samples"]], x[target["max_samples"]:]
            compare_sets(model, calibration, held, {"all int8": {}, **{f"keep_float={p!r}": {"keep_float": p}
                                                                       for p in args.keep_float}})
            continue
        started = time.perf_counter()
        result = analysis.auto_mixed_precision(model, data, max_steps=args.max_steps, **target)
        seconds = time.perf_counter() - started
        print(result)
        print(result.file.mixed_precision or "(all int8)")
        result.plot(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"mixed_precision_{name}.png"))
        first, chosen = result.steps[0], result.chosen
        rows.append((name, model.name, result, first, chosen, seconds))
    print("\n| model | target | all int8 | chosen | layers kept float | size / all-int8 | latency / all-int8 "
          "| files tried | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model_name, result, first, chosen, seconds in rows:
        def figure(step):
            if step.accuracy is not None:
                return f"{step.accuracy:.4f} ({step.sqnr_db:.1f} dB)"
            return f"{step.sqnr_db:.1f} dB"

        latency = (f"{chosen.latency_ms / first.latency_ms:.2f}" if chosen.latency_ms and first.latency_ms
                   else "-")
        float_note = f", float {result.float_accuracy:.4f}" if result.float_accuracy is not None else ""
        print(f"| {model_name} | {result.target}{float_note} ({'met' if result.met else 'not met'}) | "
              f"{figure(first)} | {figure(chosen)} | {len(result.kept_float)}: "
              f"{', '.join(result.kept_float[:4])}{' ...' if len(result.kept_float) > 4 else ''} | "
              f"{chosen.size_bytes / first.size_bytes:.3f} | {latency} | {len(result.steps)} | {seconds:.0f} s |")


if __name__ == "__main__":
    main()
