"""int8 TFLite files from kopt vs the plain TFLiteConverter: latency, size, accuracy.

1. MobileNetV2 (alpha=0.35, 224x224, 1000 classes, weights=None: ~1.7M parameters): float, the plain
   TFLiteConverter's own int8 conversion (representative data, int8 in/out), kopt PTQ and kopt QAT
   int8; latency with 1 thread in interleaved rounds (median of per-round ratios), file sizes, and
   QUANTIZE/DEQUANTIZE ops left in the body.
2. Digits CNN: test-accuracy drop float -> int8 for kopt PTQ and kopt QAT (mean over seeds).
3. Digits CNN pruned to 80% + QAT + int8, gzipped, vs the float file gzipped (kopt demo's pipeline).

    .venv/bin/python benchmarks/bench_tflite.py [--rounds 7] [--runs 10] [--seeds 3]
"""

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kopt import convert, demo, quantization  # noqa: E402
from kopt.datasets import load_digits  # noqa: E402


def plain_int8(model, samples):
    """What a user gets from the TFLiteConverter alone: full int8 from a representative dataset."""
    with tempfile.TemporaryDirectory() as folder:
        model.export(folder, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s[None]] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        return converter.convert()


def mobilenet(rounds, runs):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=0.35, weights=None)
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1, 1, (32, 224, 224, 3)).astype("float32")
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    qat.fit(samples, np.zeros(32), batch_size=8, epochs=1, verbose=0)  # calibrates the ranges, weights unchanged
    loose = dict(min_top1_agreement=0.0, min_sqnr_db=0.0)  # random weights: nothing meaningful to agree on
    files = {
        "float32": convert.to_tflite(model, quantization=None, validation_data=samples[:8]),
        "plain converter int8": plain_int8(model, samples),
        "kopt PTQ int8": convert.to_tflite(model, representative_data=samples, validation_data=samples[:8], **loose),
        "kopt QAT int8": convert.to_tflite(qat, validation_data=samples[:8], **loose),
    }
    params = model.count_params()
    latency = {name: [] for name in files}
    for r in range(rounds):
        names = list(files)
        for name in names[r % 4:] + names[:r % 4]:
            latency[name].append(convert.benchmark(files[name], threads=1, runs=runs).median_ms)
    print(f"MobileNetV2 alpha=0.35, 224x224, {params:,} parameters; 1 thread, {rounds} interleaved rounds x {runs} runs")
    print("| file | median ms | float / this (median of per-round ratios) | bytes | / float size | QUANTIZE+DEQUANTIZE ops |")
    print("|---|---|---|---|---|---|")
    for name, content in files.items():
        speedup = statistics.median(f / t for f, t in zip(latency["float32"], latency[name]))
        ops = convert.inspect(content).op_counts
        stray = ops.get("QUANTIZE", 0) + ops.get("DEQUANTIZE", 0)
        print(f"| {name} | {statistics.median(latency[name]):.2f} | {speedup:.2f} | {len(content):,} | "
              f"{len(content) / len(files['float32']):.3f} | {stray} |")


def digits_accuracy(seeds):
    (x_train, y_train), (x_test, y_test) = load_digits()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rows = []
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        model = demo.build_cnn()
        model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
        model.fit(x_train, y_train, batch_size=32, epochs=20, verbose=0)
        float_acc = model.evaluate(x_test, y_test, verbose=0)[1]
        ptq = convert.to_tflite(model, representative_data=x_train, validation_data=x_test)
        qat = quantization.quantize_model(model)
        qat.compile(keras.optimizers.Adam(1e-4), loss)
        qat.fit(x_train, y_train, batch_size=32, epochs=5, verbose=0)
        qat_file = convert.to_tflite(qat, validation_data=x_test)
        rows.append((float_acc, convert.evaluate(ptq, x_test, y_test), convert.evaluate(qat_file, x_test, y_test)))
    print(f"\ndigits CNN, test split of {len(x_test)} images (1 image = {100 / len(x_test):.2f} pt), {seeds} seeds")
    print("| seed | float | PTQ int8 | QAT int8 |")
    print("|---|---|---|---|")
    for seed, (f, p, q) in enumerate(rows):
        print(f"| {seed} | {f:.4f} | {p:.4f} | {q:.4f} |")
    drop_ptq = statistics.fmean(100 * (f - p) for f, p, _ in rows)
    drop_qat = statistics.fmean(100 * (f - q) for f, _, q in rows)
    print(f"mean accuracy drop float -> int8: PTQ {drop_ptq:+.2f} pt (target <= 0.5), QAT {drop_qat:+.2f} pt "
          "(target <= 0.2); negative = int8 better")


def pruned_gzip():
    report = demo.run(output_dir=None, verbose=0)
    g = report["gzip_bytes"]
    print(f"\ndigits CNN 80%-pruned + QAT + int8 (kopt demo pipeline): gzipped {g['int8']:,} B vs float gzipped "
          f"{g['float']:,} B -> {g['float'] / g['int8']:.1f}x smaller (target >= 10x); "
          f"int8 zero weights {report['int8_zero_weight_fraction']:.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    mobilenet(args.rounds, args.runs)
    digits_accuracy(args.seeds)
    pruned_gzip()


if __name__ == "__main__":
    main()
