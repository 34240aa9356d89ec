"""Weight clustering: accuracy and gzipped int8 size, kopt against tfmot from the same trained weights.

For the digits CNN (kopt.demo.build_cnn) and a MobileNetV2 (alpha 0.35, 32x32 digits, 10 classes), both trained in
Keras 3 and copied into tf_keras:
- float: the float .tflite file;
- int8: post-training full int8 of the float model;
- clustered N + int8: `cluster_weights(N clusters, k-means++)`, fine-tuned (Adam 1e-4, no shuffling),
  `strip_clustering`, then full int8.
Each toolkit converts its own model: kopt with `kopt.convert.to_tflite`, tfmot (tf_keras, in its own process) with
the TFLiteConverter; tfmot's clustered weights are also converted with kopt's converter, which compares the two
clusterings alone. Accuracy is measured on the held-out digits in LiteRT; sizes are gzip -9 of the files.

    .venv/bin/python benchmarks/bench_clustering.py [--quick]
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

CLUSTERS = (16, 32)


def _mobilenet_inputs(x):
    """8x8x1 digits as 32x32x3 images (each pixel repeated 4x4, in every channel)."""
    return np.repeat(np.kron(x, np.ones((1, 4, 4, 1), "float32")), 3, axis=-1)


def _fast_batchnorm(model):
    """BatchNormalization moving statistics that follow ~100 steps (momentum 0.9, Keras's default is 0.99 and
    MobileNetV2's 0.999): a few hundred training steps on digits would otherwise leave them near their initial
    values, and the model at chance in inference. The same in both toolkits."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            layer.momentum = 0.9


def _litert_accuracy(content, x, y):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    correct = 0
    for sample, label in zip(x, y):
        value = sample[None]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"])[0]) == label)
    return correct / len(y)


def _row(content, x, y):
    return {"accuracy": _litert_accuracy(content, x, y), "gzip_bytes": len(gzip.compress(bytes(content), 9)),
            "bytes": len(content)}


def _unique(model):
    return max(len(np.unique(np.asarray(layer.kernel))) for layer in model.layers if hasattr(layer, "kernel")
               and len(np.asarray(layer.kernel).shape) in (2, 4) and type(layer).__name__ in ("Conv2D", "Dense"))


def tfmot_worker(src, dst):
    """Runs in its own process with TF_USE_LEGACY_KERAS=1: tfmot's clustering, the TFLiteConverter."""
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    with np.load(src, allow_pickle=True) as f:
        data = {k: f[k] for k in f.files}
    config = json.loads(str(data["config"]))
    results, weights = {}, {}
    for name, spec in config["models"].items():
        def fresh():
            # A new model each time: tfmot's clustered model shares its layers with the model passed in, and
            # clustering it again fails (StopIteration in ClusterWeights.build).
            tf_keras.utils.set_random_seed(0)
            if name == "digits_cnn":
                L = tf_keras.layers
                model = tf_keras.Sequential([
                    tf_keras.Input((8, 8, 1)), L.Conv2D(16, 3, padding="same", activation="relu"),
                    L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(), L.Flatten(),
                    L.Dense(128, activation="relu"), L.Dense(10)])
            else:
                model = tf_keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3),
                                                          classes=10, classifier_activation=None)
                _fast_batchnorm(model)
            model.set_weights([data[f"{name}_weight_{i}"] for i in range(spec["n_weights"])])
            return model

        model = fresh()
        x_train, y_train = data[f"{name}_x_train"], data["y_train"]
        x_test, y_test = data[f"{name}_x_test"], data["y_test"]

        def int8(keras_model):
            converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([s[None]] for s in x_train[:200])
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            return converter.convert()

        rows = {"int8": _row(int8(model), x_test, y_test)}
        for n in config["clusters"]:
            tf_keras.utils.set_random_seed(0)
            clustered = tfmot.clustering.keras.cluster_weights(
                fresh(), number_of_clusters=n,
                cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS)
            clustered.compile(tf_keras.optimizers.Adam(1e-4),
                              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            clustered.fit(x_train, y_train, batch_size=32, epochs=config["epochs"], shuffle=False, verbose=0)
            stripped = tfmot.clustering.keras.strip_clustering(clustered)
            rows[f"clustered {n} + int8"] = {**_row(int8(stripped), x_test, y_test), "unique": _unique(stripped)}
            weights[f"{name}_c{n}"] = stripped.get_weights()
        results[name] = rows
    with open(dst, "w") as f:
        json.dump(results, f)
    np.savez(dst + ".npz", **{f"{key}_{i}": w for key, ws in weights.items() for i, w in enumerate(ws)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings, digits CNN only (checks that the script runs)")
    args = parser.parse_args()

    import keras

    from kopt import clustering, convert, demo
    from kopt.datasets import load_digits

    (x_train, y_train), (x_test, y_test) = load_digits()
    if args.quick:
        x_train, y_train, x_test, y_test = x_train[:128], y_train[:128], x_test[:64], y_test[:64]
    epochs = {"digits_cnn": 1 if args.quick else 15, "mobilenet_v2": 1 if args.quick else 20}
    fine_tune = 1 if args.quick else 3
    clusters = CLUSTERS[:1] if args.quick else CLUSTERS
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    models, shared = {}, {"y_train": y_train, "y_test": y_test}
    for name in ("digits_cnn",) if args.quick else ("digits_cnn", "mobilenet_v2"):
        keras.utils.set_random_seed(0)
        if name == "digits_cnn":
            model, xs = demo.build_cnn(), (x_train, x_test)
        else:
            model = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10,
                                                   classifier_activation=None)
            _fast_batchnorm(model)
            xs = (_mobilenet_inputs(x_train), _mobilenet_inputs(x_test))
        model.compile(keras.optimizers.Adam(1e-3), loss)
        model.fit(xs[0], y_train, batch_size=32, epochs=epochs[name], verbose=0)
        models[name] = (model, xs)
        weights = model.get_weights()
        shared.update({f"{name}_weight_{i}": w for i, w in enumerate(weights)})
        shared.update({f"{name}_x_train": xs[0], f"{name}_x_test": xs[1]})
        shared.setdefault("config", {"models": {}, "clusters": list(clusters), "epochs": fine_tune})
        shared["config"]["models"][name] = {"n_weights": len(weights)}

    with tempfile.TemporaryDirectory() as folder:
        src, dst = os.path.join(folder, "in.npz"), os.path.join(folder, "out.json")
        np.savez(src, **{**shared, "config": json.dumps(shared["config"])})
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1")
        proc = subprocess.run([sys.executable, __file__, "--tfmot-worker", src, dst], env=env, capture_output=True,
                              text=True, timeout=3600)
        if proc.returncode:
            raise SystemExit(f"the tfmot run failed:\n{proc.stderr[-4000:]}")
        with open(dst) as f:
            tfmot_rows = json.load(f)
        with np.load(dst + ".npz") as f:
            tfmot_weights = {k: f[k] for k in f.files}

        for name, (model, (x_tr, x_te)) in models.items():
            def int8(keras_model, tag):
                path = os.path.join(folder, f"{name}_{tag}.tflite")
                convert.to_tflite(keras_model, path, representative_data=x_tr[:200], validation_data=x_te[:64],
                                  on_mismatch="warn")
                with open(path, "rb") as f:
                    return f.read()

            path = os.path.join(folder, f"{name}_float.tflite")
            convert.to_tflite(model, path, quantization=None, validate=False)
            with open(path, "rb") as f:
                rows = {"float": _row(f.read(), x_te, y_test)}
            rows["int8"] = _row(int8(model, "int8"), x_te, y_test)
            same_converter = {}
            for n in clusters:
                keras.utils.set_random_seed(0)
                clustered = clustering.cluster_weights(model, number_of_clusters=n)
                clustered.compile(keras.optimizers.Adam(1e-4), loss)
                clustered.fit(x_tr, y_train, batch_size=32, epochs=fine_tune, shuffle=False, verbose=0)
                stripped = clustering.strip_clustering(clustered)
                rows[f"clustered {n} + int8"] = {**_row(int8(stripped, f"c{n}"), x_te, y_test),
                                                 "unique": _unique(stripped)}
                if any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers):
                    # tfmot's ClusterWeights wrapper calls its layer without `training`, so a BatchNormalization it
                    # wraps runs in inference mode through the fine-tuning (statistics frozen, measured). The same
                    # here: trainable=False runs a Keras 3 BatchNormalization in inference mode.
                    keras.utils.set_random_seed(0)
                    frozen = clustering.cluster_weights(model, number_of_clusters=n)
                    for layer in frozen.layers:
                        if isinstance(layer, keras.layers.BatchNormalization):
                            layer.trainable = False
                    frozen.compile(keras.optimizers.Adam(1e-4), loss)
                    frozen.fit(x_tr, y_train, batch_size=32, epochs=fine_tune, shuffle=False, verbose=0)
                    frozen = clustering.strip_clustering(frozen)
                    rows[f"clustered {n} + int8, BN frozen as tfmot"] = _row(int8(frozen, f"f{n}"), x_te, y_test)
                # tfmot's clustered weights through kopt's converter: the clustering compared alone.
                stripped.set_weights([tfmot_weights[f"{name}_c{n}_{i}"] for i in range(len(stripped.weights))])
                same_converter[n] = _row(int8(stripped, f"tfmot_c{n}"), x_te, y_test)
            print(f"\n{name} ({len(y_test)} test digits)")
            print(f"  {'file':38s} {'kopt acc':>9s} {'kopt gzip B':>12s} {'tfmot acc':>10s} {'tfmot gzip B':>13s}"
                  f" {'kopt/tfmot size':>16s}")
            for label, row in rows.items():
                theirs = tfmot_rows[name].get(label.replace(", BN frozen as tfmot", ""))
                other = (f" {theirs['accuracy']:10.4f} {theirs['gzip_bytes']:13,d} "
                         f"{row['gzip_bytes'] / theirs['gzip_bytes']:16.3f}") if theirs else ""
                print(f"  {label:38s} {row['accuracy']:9.4f} {row['gzip_bytes']:12,d}{other}")
            for n, theirs in same_converter.items():
                mine = rows[f"clustered {n} + int8"]
                print(f"  clustered {n}, both through kopt's converter: kopt {mine['accuracy']:.4f} at "
                      f"{mine['gzip_bytes']:,} B, tfmot's weights {theirs['accuracy']:.4f} at "
                      f"{theirs['gzip_bytes']:,} B (kopt/tfmot size {mine['gzip_bytes'] / theirs['gzip_bytes']:.3f})")
            base = rows["float"]["gzip_bytes"]
            for label, row in rows.items():
                if label != "float":
                    print(f"  {label}: {base / row['gzip_bytes']:.1f}x smaller than float (gzipped)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--tfmot-worker":
        tfmot_worker(sys.argv[2], sys.argv[3])
    else:
        main()
