"""The model zoo in `tflite_models/`: every file made by one command, with a manifest to check and rebuild it.

    python -m kopt.zoo                      # (re)build tflite_models/ and its manifest.json
    python -m kopt.zoo --check              # rebuild in a temporary folder; compare accuracies with the manifest
    python -m kopt.zoo --only NAME[,NAME]   # just those files

From scikit-learn's digits (nothing is downloaded): the digits CNN as float32, post-training int8, QAT int8, pruned
(80%) + QAT int8 (`kopt.recipe`, as `kopt demo`) and float ONNX; and `keras.applications.MobileNetV2` (alpha 0.35, 32x32 RGB digits, `weights=None`)
as post-training int8 and QAT int8. Training is seeded and, from the command line, deterministic
(`tf.config.experimental.enable_op_determinism`), so a rebuild on the same machine and versions gives the same
accuracies. Each manifest entry records the command, the source, the file's accuracy on the digits test split
(measured in LiteRT or onnxruntime), bytes raw and gzipped, SHA-256, op counts and the package versions.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

COMMAND = "python -m kopt.zoo"
DIGITS_CNN_FILES = ("digits_cnn_float.tflite", "digits_cnn_ptq_int8.tflite", "digits_cnn_qat_int8.tflite",
                    "digits_cnn_pruned_qat_int8.tflite", "digits_cnn_float.onnx")
MOBILENET_FILES = ("mobilenet_v2_035_digits32_ptq_int8.tflite", "mobilenet_v2_035_digits32_qat_int8.tflite")
FILES = DIGITS_CNN_FILES + MOBILENET_FILES


def digits_data(name, seed=0):
    """The digits split a zoo file is measured on: "digits_8x8" (as kopt.datasets) or "digits_32x32_rgb".

    Args:
        name: "digits_8x8" or "digits_32x32_rgb" (8x8 images resized bilinearly, grey copied to 3 channels).
        seed: seed of the train/test split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, images float32 in [0, 1].

    Example:

    ```python
    from kopt import zoo
    (x_train, y_train), (x_test, y_test) = zoo.digits_data("digits_32x32_rgb")
    ```
    """
    from kopt.datasets import load_digits

    (x_train, y_train), (x_test, y_test) = load_digits(seed=seed)
    if name == "digits_8x8":
        return (x_train, y_train), (x_test, y_test)
    if name != "digits_32x32_rgb":
        raise ValueError(f"Unknown data {name!r}: use 'digits_8x8' or 'digits_32x32_rgb'.")
    import tensorflow as tf

    def big(x):
        return np.repeat(tf.image.resize(x, (32, 32), method="bilinear").numpy().clip(0, 1), 3, axis=-1)

    return (big(x_train), y_train), (big(x_test), y_test)


def file_accuracy(content, filename, x, y):
    """Top-1 accuracy of a .tflite (LiteRT) or .onnx (onnxruntime) classifier file on `(x, y)`.

    Args:
        content: the file's bytes.
        filename: its name; the suffix says which runtime runs it.
        x: inputs.
        y: integer labels.

    Example:

    ```python
    from kopt import zoo
    (_, _), (x, y) = zoo.digits_data("digits_8x8")
    accuracy = zoo.file_accuracy(open("tflite_models/digits_cnn_float.tflite", "rb").read(), "f.tflite", x, y)
    ```
    """
    if filename.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(bytes(content), providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        return float(np.mean(logits.argmax(-1) == y))
    from kopt import convert

    return convert.evaluate(content, x, y)


def _digits_cnn(names, say, seed):
    import keras

    from kopt import convert, recipe
    from kopt.demo import build_cnn

    (x_train, y_train), (x_test, y_test) = digits_data("digits_8x8", seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(seed)
    say("digits CNN: training 20 epochs")
    model = build_cnn()
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=20, verbose=0)
    source = "digits CNN (kopt.demo.build_cnn), 20 epochs on sklearn digits"
    made = {}
    if "digits_cnn_float.tflite" in names:
        made["digits_cnn_float.tflite"] = (convert.to_tflite(model, quantization=None, validation_data=x_test),
                                           source + ", float32", model)
    if "digits_cnn_ptq_int8.tflite" in names:
        made["digits_cnn_ptq_int8.tflite"] = (
            convert.to_tflite(model, representative_data=x_train, validation_data=x_test),
            source + ", post-training int8 (calibrated on the training images)", model)
    if "digits_cnn_float.onnx" in names:
        made["digits_cnn_float.onnx"] = (convert.to_onnx(model, validation_data=x_test), source + ", float32 ONNX",
                                         model)
    if "digits_cnn_qat_int8.tflite" in names:
        say("digits CNN: QAT 5 epochs")
        qat = recipe.quantize_aware(model, x_train, y_train, epochs=5, batch_size=32, seed=seed + 1)
        made["digits_cnn_qat_int8.tflite"] = (convert.to_tflite(qat, validation_data=x_test),
                                              source + ", QAT int8 (5 epochs)", qat)
    if "digits_cnn_pruned_qat_int8.tflite" in names:
        say("digits CNN: pruning to 80% over 10 epochs, then QAT 5 epochs")
        qat = recipe.compress(model, x_train, y_train, sparsity=0.8, prune_epochs=10, qat_epochs=5, batch_size=32,
                              seed=seed + 2)
        made["digits_cnn_pruned_qat_int8.tflite"] = (
            convert.to_tflite(qat, validation_data=x_test),
            source + ", kopt.recipe.compress: pruned to 80% over 10 epochs, stripped, QAT int8 (5 epochs)", qat)
    return made, "digits_8x8", (x_test, y_test)


def _mobilenet(names, say, seed):
    import keras

    from kopt import convert, recipe

    (x_train, y_train), (x_test, y_test) = digits_data("digits_32x32_rgb", seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(seed)
    say("MobileNetV2 0.35 on 32x32 digits: training 15 epochs")
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                           classifier_activation=None)
    for layer in model.layers:  # the application's 0.999 leaves the moving statistics unsettled after 650 steps
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(keras.optimizers.Adam(2e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=15, verbose=0)
    source = ("keras.applications.MobileNetV2(alpha=0.35, input 32x32x3, weights=None, BatchNormalization momentum "
              "0.9), 15 epochs on sklearn digits resized to 32x32 RGB")
    made = {}
    if "mobilenet_v2_035_digits32_ptq_int8.tflite" in names:
        made["mobilenet_v2_035_digits32_ptq_int8.tflite"] = (
            convert.to_tflite(model, representative_data=x_train, validation_data=x_test),
            source + ", post-training int8", model)
    if "mobilenet_v2_035_digits32_qat_int8.tflite" in names:
        say("MobileNetV2: QAT 3 epochs")
        # At 1e-4, as the committed file was made (the recipe's default is a tenth of this model's 2e-3).
        qat = recipe.quantize_aware(model, x_train, y_train, epochs=3, batch_size=32, learning_rate=1e-4,
                                    seed=seed + 1)
        made["mobilenet_v2_035_digits32_qat_int8.tflite"] = (
            convert.to_tflite(qat, validation_data=x_test), source + ", QAT int8 (3 epochs)", qat)
    return made, "digits_32x32_rgb", (x_test, y_test)


def build(output_dir="tflite_models", only=None, seed=0, verbose=1):
    """Trains and converts the zoo's models and writes each file and its manifest entry to `output_dir`.

    Args:
        output_dir: the folder to write to (created if missing).
        only: names of the files to make (default: all of `FILES`).
        seed: random seed of the data split and of training.
        verbose: 1 prints progress, 0 is silent.

    Returns:
        `{filename: manifest entry}` of the files made.

    Example:

    ```python
    from kopt import zoo
    entries = zoo.build("zoo", only=["digits_cnn_float.tflite"], verbose=0)
    ```
    """
    from kopt import manifest

    names = list(FILES if only is None else only)
    unknown = sorted(set(names) - set(FILES))
    if unknown:
        raise ValueError(f"`only`: unknown file(s) {unknown}; the zoo makes {list(FILES)}.")
    os.makedirs(output_dir, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    records = {}
    for group, maker in ((DIGITS_CNN_FILES, _digits_cnn), (MOBILENET_FILES, _mobilenet)):
        wanted = [n for n in names if n in group]
        if not wanted:
            continue
        start = time.perf_counter()
        made, data, (x_test, y_test) = maker(wanted, say, seed)
        for filename, (content, source, model) in made.items():
            accuracy = file_accuracy(content, filename, x_test, y_test)
            keras_accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(-1) == y_test))
            records[filename] = manifest.entry(content, filename, f"{COMMAND} --only {filename}", source, data=data,
                                               seed=seed, accuracy=accuracy, keras_accuracy=keras_accuracy)
            # File and manifest entry together, so an interrupted build leaves every entry true of its file.
            content.save(os.path.join(output_dir, filename))
            manifest.write(output_dir, {filename: records[filename]})
            say(f"  {filename}: accuracy {accuracy:.4f} (Keras {keras_accuracy:.4f}), {len(content):,} bytes")
        say(f"  ({time.perf_counter() - start:.0f} s)")
    return records


def check(output_dir="tflite_models", only=None, tolerance=0.0, verbose=1):
    """Rebuilds the zoo in a temporary folder and compares each file's accuracy with `output_dir`'s manifest.

    Args:
        output_dir: the folder whose manifest.json is checked.
        only: names of the files to rebuild (default: every file in the manifest made by this module).
        tolerance: largest accepted accuracy difference.
        verbose: 1 prints a table.

    Returns:
        `{filename: (manifest accuracy, rebuilt accuracy)}`; raises ValueError if any differs by more than
        `tolerance`.

    Example:

    ```python
    from kopt import zoo
    zoo.build("zoo", only=["digits_cnn_float.tflite"], verbose=0)
    zoo.check("zoo", only=["digits_cnn_float.tflite"], verbose=0)
    ```
    """
    with open(os.path.join(output_dir, "manifest.json")) as f:
        recorded = json.load(f)
    names = list(only or [n for n in FILES if n in recorded])
    missing = [n for n in names if n not in recorded]
    if missing:
        raise ValueError(f"`only`: {missing} are not in {output_dir}/manifest.json.")
    with tempfile.TemporaryDirectory() as folder:
        rebuilt = build(folder, only=names, seed=recorded[names[0]].get("seed", 0), verbose=verbose)
    results = {n: (recorded[n]["accuracy"], rebuilt[n]["accuracy"]) for n in names}
    say = print if verbose else (lambda *a, **k: None)
    say(f"{'file':46}{'manifest':>10}{'rebuilt':>10}")
    for name, (old, new) in results.items():
        say(f"{name:46}{old:>10.4f}{new:>10.4f}")
    off = {n: r for n, r in results.items() if abs(r[0] - r[1]) > tolerance}
    if off:
        raise ValueError(f"Rebuilt accuracies differ from the manifest by more than {tolerance}: {off}")
    return results


def main(argv=None):
    """`python -m kopt.zoo`: builds (or with `--check`, rebuilds and compares) the zoo; returns the exit code."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="tflite_models", help="the zoo folder (default tflite_models)")
    parser.add_argument("--only", help="comma-separated file names (default: all)")
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare accuracies "
                                                             "with the manifest instead of writing")
    parser.add_argument("--tolerance", type=float, default=0.0, help="accepted accuracy difference for --check")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()  # same accuracies on a rebuild (this process only)
    only = args.only.split(",") if args.only else None
    try:
        if args.check:
            check(args.output_dir, only, args.tolerance)
        else:
            build(args.output_dir, only, args.seed)
    except ValueError as error:
        print(f"{COMMAND}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
