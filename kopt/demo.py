"""The main job: train, prune, quantize-aware fine-tune and convert a digits CNN to a validated int8 TFLite file."""

import gzip
import os
import time

import numpy as np


def build_cnn():
    """The small digits CNN used by the demo, tests and benchmarks (8x8x1 -> 10 logits)."""
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ], name="digits_cnn")


def _gzip_size(content):
    return len(gzip.compress(bytes(content), 9))


def run(epochs=20, prune_epochs=10, qat_epochs=5, target_sparsity=0.8, output_dir="tflite_models", seed=0,
        verbose=1):
    """Dense training -> pruning -> QAT -> full-int8 TFLite, validated; returns the figures.

    The compression is `kopt.recipe`'s (as in the model zoo and `CompressionTuner`): `recipe.prune`, then
    `recipe.quantize_aware`, the two halves of `recipe.compress`, with the pruned model measured in between.

    Args:
        epochs: epochs of dense training.
        prune_epochs: epochs of pruning + fine-tuning.
        qat_epochs: epochs of quantization-aware fine-tuning.
        target_sparsity: final fraction of zeros in every pruned weight.
        output_dir: folder for `digits_int8.tflite` and its manifest; None writes nothing.
        seed: random seed.
        verbose: 1 prints progress and the table, 0 is silent.

    Returns:
        A dict of the figures in the table.

    Example:

    ```python
    from kopt import demo
    report = demo.run(epochs=2, prune_epochs=2, qat_epochs=1, output_dir=None, verbose=0)
    ```
    """
    import keras

    from kopt import convert, recipe, sparsity
    from kopt.datasets import load_digits

    say = print if verbose else (lambda *a, **k: None)
    fit_verbose = 2 if verbose else 0
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits(seed=seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    say(f"[1/5] training the float CNN on digits ({len(x_train)} train / {len(x_test)} test images)")
    model = build_cnn()
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=fit_verbose)
    float_acc = model.evaluate(x_test, y_test, verbose=0)[1]

    say(f"[2/5] pruning to {target_sparsity:.0%} sparsity over {prune_epochs} epochs")
    stripped = model
    if target_sparsity:
        stripped = recipe.prune(model, x_train, y_train, sparsity=target_sparsity, epochs=prune_epochs,
                                batch_size=32, verbose=fit_verbose)
    pruned_acc = stripped.evaluate(x_test, y_test, verbose=0)[1]

    say(f"[3/5] quantization-aware fine-tuning for {qat_epochs} epochs (zeros kept)")
    qat = recipe.quantize_aware(stripped, x_train, y_train, epochs=qat_epochs, batch_size=32, verbose=fit_verbose)
    qat_acc = qat.evaluate(x_test, y_test, verbose=0)[1]

    say("[4/5] converting to full int8 TFLite and validating against the QAT model")
    float_tflite = convert.to_tflite(model, quantization=None, validation_data=x_test)
    pruned_tflite = convert.to_tflite(stripped, quantization=None, validation_data=x_test)
    path = None
    if output_dir is not None:
        if not os.path.isdir(output_dir):
            os.makedirs(output_dir)
        path = os.path.join(output_dir, "digits_int8.tflite")
    int8_tflite = convert.to_tflite(qat, path, validation_data=x_test)
    info = convert.inspect(int8_tflite)
    say(f"      {int8_tflite.report}")

    say("[5/5] measuring accuracy, size and latency")
    int8_acc = convert.evaluate(int8_tflite, x_test, y_test)
    float_ms = float(convert.benchmark(float_tflite, threads=1, runs=200))
    int8_ms = float(convert.benchmark(int8_tflite, threads=1, runs=200))
    report = {
        "float_accuracy": float(float_acc), "pruned_accuracy": float(pruned_acc), "qat_accuracy": float(qat_acc),
        "int8_accuracy": float(int8_acc), "top1_agreement": int8_tflite.report.top1_agreement,
        "sqnr_db": int8_tflite.report.sqnr_db, "full_integer": info.is_full_integer,
        "int8_zero_weight_fraction": info.zero_weight_fraction,
        "sparsity": sparsity.get_sparsity(stripped),
        "bytes": {"float": len(float_tflite), "pruned": len(pruned_tflite), "int8": len(int8_tflite)},
        "gzip_bytes": {"float": _gzip_size(float_tflite), "pruned": _gzip_size(pruned_tflite),
                       "int8": _gzip_size(int8_tflite)},
        "latency_ms": {"float": float_ms, "int8": int8_ms},
        "path": path, "seconds": time.perf_counter() - start,
    }
    if path is not None:
        from kopt import manifest

        source = f"digits CNN (kopt.demo.build_cnn), pruned to {target_sparsity:.0%}, stripped, QAT int8"
        manifest.write(output_dir, {"digits_int8.tflite": manifest.entry(
            int8_tflite, "digits_int8.tflite", "kopt demo", source, data="digits_8x8", accuracy=report["int8_accuracy"],
            keras_accuracy=report["qat_accuracy"], top1_agreement=report["top1_agreement"],
            zero_weight_fraction=info.zero_weight_fraction)})

    b, g = report["bytes"], report["gzip_bytes"]
    say("")
    say(f"{'':28}{'float':>12}{'pruned':>12}{'int8':>12}")
    say(f"{'test accuracy':28}{float_acc:>12.4f}{pruned_acc:>12.4f}{int8_acc:>12.4f}   (QAT Keras {qat_acc:.4f})")
    say(f"{'.tflite size (bytes)':28}{b['float']:>12,}{b['pruned']:>12,}{b['int8']:>12,}")
    say(f"{'.tflite gzipped (bytes)':28}{g['float']:>12,}{g['pruned']:>12,}{g['int8']:>12,}"
        f"   ({g['float'] / g['int8']:.1f}x smaller)")
    say(f"{'latency, 1 thread (ms)':28}{float_ms:>12.4f}{'':>12}{int8_ms:>12.4f}")
    say(f"{'zero weights':28}{0.0:>12.0%}{np.mean(list(report['sparsity'].values())):>12.0%}"
        f"{info.zero_weight_fraction:>12.0%}")
    say(f"\nint8 vs QAT model: top-1 agreement {report['top1_agreement']:.2%}, SQNR {report['sqnr_db']:.1f} dB, "
        f"{'all ops integer' if info.is_full_integer else 'float ops left!'}")
    if path:
        say(f"wrote {path} (manifest: {os.path.join(output_dir, 'manifest.json')})")
    say(f"done in {report['seconds']:.0f} s")
    return report
