"""Transformers in int8: TFLite size and latency of a BERT-tiny-sized encoder and a ViT-Ti-sized model, and the
QAT / float training-step time of a transformer next to the digits CNN's.

Models (KerasHub constructors, random weights, nothing downloaded):
- BERT-tiny-sized: `BertBackbone` with 2 layers, hidden 128, 2 heads, intermediate 512, BERT's 30,522-token
  vocabulary, sequence length 128, in a `BertTextClassifier` with 2 classes;
- ViT-Ti-sized: `ViTBackbone` with 12 layers, hidden 192, 3 heads, MLP 768, 224x224 images, patches of 16, in a
  Functional classifier on the class token (10 classes). `--small` runs a 2-layer, 64x64 ViT instead (minutes
  less).

Each model is converted to float32, post-training int8 (`to_tflite`, 32 synthetic calibration samples) and QAT int8
(`quantize_model`, 2 epochs on synthetic data, `to_tflite` with the same calibration samples for the ranges QAT
does not learn inside attention); latency is LiteRT's (1 thread, XNNPACK), timed in interleaved rounds, the
ratios within one run. Then the step time of `fit` for QAT vs float, BERT-tiny and the digits CNN, interleaved.

    .venv/bin/python benchmarks/bench_transformer.py [--rounds 7] [--small]
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
from common import interleaved_pairs, time_fit  # noqa: E402

from kopt import convert, quantization  # noqa: E402
from kopt.demo import build_cnn  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def bert_tiny(sequence_length=128):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=30522, num_layers=2, num_heads=2, hidden_dim=128,
                                             intermediate_dim=512, max_sequence_length=sequence_length)
    model = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2, preprocessor=None)
    rng = np.random.default_rng(0)

    def data(n):
        ids = rng.integers(1000, 30522, (n, sequence_length)).astype("int32")
        x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}
        return x, (ids[:, 0] > 15000).astype("int32")

    return model, data


def vit_tiny(small=False):
    keras.utils.set_random_seed(0)
    size, layers = (64, 2) if small else (224, 12)
    backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), patch_size=16, num_layers=layers,
                                            num_heads=3, hidden_dim=192, mlp_dim=768)
    images = keras.Input((size, size, 3), name="images")
    cls = keras.layers.Lambda(lambda t: t[:, 0], name="class_token")(backbone(images))
    model = keras.Model(images, keras.layers.Dense(10, name="head")(cls))
    rng = np.random.default_rng(0)

    def data(n):
        x = rng.random((n, size, size, 3)).astype("float32")
        return x, rng.integers(0, 10, n)

    return model, data


def take(x, n):
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def files(name, model, data, epochs=2):
    x, y = data(96)
    model.compile(keras.optimizers.Adam(1e-4), LOSS)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    calibration = take(x, 32)
    # Random weights, briefly trained: the int8 files' agreement is reported, not required (on_mismatch="warn").
    made = {"float32": convert.to_tflite(model, quantization=None, validation_data=calibration),
            "PTQ int8": convert.to_tflite(model, representative_data=calibration, validation_data=take(x, 64),
                                          on_mismatch="warn")}
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-5), LOSS)
    qat.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    made["QAT int8"] = convert.to_tflite(qat, representative_data=calibration, validation_data=take(x, 64),
                                         on_mismatch="warn")
    for label, result in made.items():
        print(f"  {name} {label}: {result.report}", flush=True)
    return made


def latency_table(name, made, rounds, input_shapes=None):
    per_round = {label: [] for label in made}
    for _ in range(rounds):
        for label, content in made.items():
            per_round[label].append(float(convert.benchmark(content, threads=1, runs=10, warmup=2,
                                                            input_shapes=input_shapes)))
    base_size, base_ms = len(made["float32"]), per_round["float32"]
    print(f"\n{name}: {rounds} interleaved rounds x 10 runs, 1 thread")
    print("| file | bytes | size / float | median ms | speed-up vs float (median of per-round ratios) | vs its Keras model |")
    print("|---|---|---|---|---|---|")
    for label, content in made.items():
        ratio = statistics.median(b / t for b, t in zip(base_ms, per_round[label]))
        report = content.report
        print(f"| {label} | {len(content):,} | {len(content) / base_size:.3f} | {statistics.median(per_round[label]):.2f}"
              f" | {ratio:.2f} | {report.sqnr_db:.1f} dB, top-1 "
              f"{'n/a' if report.top1_agreement is None else format(report.top1_agreement, '.0%')}"
              f"{'' if report.passed else ' (below the default threshold)'} |")


def step_ratios(rounds):
    bert, data = bert_tiny(sequence_length=64)
    x, y = data(256)
    cnn = build_cnn()
    rng = np.random.default_rng(0)
    cx, cy = rng.random((6400, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 6400)
    models = {"BERT-tiny float": bert, "BERT-tiny QAT": quantization.quantize_model(bert),
              "CNN float": cnn, "CNN QAT": quantization.quantize_model(cnn)}
    for model in models.values():
        model.compile(keras.optimizers.Adam(1e-4), LOSS)
    feeds = {"BERT-tiny": (x, y), "CNN": (cx, cy)}
    medians, ratios = interleaved_pairs(
        {"BERT-tiny (seq 64) QAT / float": ("BERT-tiny float", "BERT-tiny QAT"),
         "digits CNN QAT / float": ("CNN float", "CNN QAT")},
        lambda name: time_fit(models[name], *feeds[name.split(" ")[0]], 32), rounds)
    print(f"\nTraining step, batch 32, {rounds} interleaved rounds (wall, CPU ms per step; ratios: medians of per-round)")
    for name, (wall, cpu) in medians.items():
        print(f"  {name}: {wall:.2f} ms wall, {cpu:.2f} ms CPU")
    for label, (wall, cpu) in ratios.items():
        print(f"  {label}: {wall:.3f} wall, {cpu:.3f} CPU")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="a 2-layer 64x64 ViT instead of ViT-Ti at 224")
    args = parser.parse_args()
    sequence = {k: (128,) for k in ("token_ids", "segment_ids", "padding_mask")}
    models = {"BERT-tiny-sized encoder (sequence 128)": (*bert_tiny(), sequence),
              "ViT-Ti-sized": (*vit_tiny(args.small), None)}
    for name, (model, data, shapes) in models.items():
        print(f"{name}: {model.count_params():,} parameters", flush=True)
        latency_table(name, files(name, model, data), args.rounds, shapes)
    step_ratios(args.rounds)


if __name__ == "__main__":
    main()
