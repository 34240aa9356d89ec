"""The reference for clustering: tfmot's `clustering.keras` on tf_keras, in its own process.

Usage: TF_USE_LEGACY_KERAS=1 python tfmot_clustering_oracle.py IN.npz OUT.npz

IN.npz holds the digits CNN's weights (`weight_<i>`), the data (`x_train`, `y_train`, `x_test`, `y_test`) and the
cases as JSON (`cases`): `[{"init": "LINEAR", "clusters": 8, "preserve_sparsity": false, "per_channel": false,
"epochs": 0}]`. For each case OUT.npz holds, for the Conv2D, Conv2D and two Dense layers in order: the initial
centroids (`centroids_<case>_<layer>`), the clustered model's logits before fine-tuning (`logits_<case>`), and after
`epochs` of fine-tuning (Adam 1e-4, batches of 32, no shuffling) and `strip_clustering`, the test accuracy
(`accuracy_<case>`) and each kernel's distinct values (`unique_<case>`).
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow_model_optimization.python.core.clustering.keras.experimental import (  # noqa: E402
    cluster as experimental_cluster)

clustering = tfmot.clustering.keras


def build_cnn(weights):
    layers = tf_keras.layers
    model = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10),
    ])
    model.set_weights(weights)
    return model


def run_case(case, weights, data):
    tf_keras.utils.set_random_seed(0)
    params = {"number_of_clusters": case["clusters"],
              "cluster_centroids_init": getattr(clustering.CentroidInitialization, case["init"])}
    if case.get("preserve_sparsity") or case.get("per_channel"):
        clustered = experimental_cluster.cluster_weights(
            build_cnn(weights), preserve_sparsity=case.get("preserve_sparsity", False),
            cluster_per_channel=case.get("per_channel", False), **params)
    else:
        clustered = clustering.cluster_weights(build_cnn(weights), **params)
    # tfmot also wraps the layers without weights (MaxPooling2D, Flatten): they have no centroids.
    wrappers = [layer for layer in clustered.layers
                if type(layer).__name__ == "ClusterWeights" and layer.cluster_centroids]
    out = {}
    for j, wrapper in enumerate(wrappers):
        (centroids,) = wrapper.cluster_centroids.values()
        out[f"centroids_{j}"] = np.asarray(centroids.numpy(), np.float32)
    out["logits"] = clustered.predict(data["x_test"], verbose=0)
    if case.get("epochs"):
        clustered.compile(tf_keras.optimizers.Adam(1e-4),
                          tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        clustered.fit(data["x_train"], data["y_train"], batch_size=32, epochs=case["epochs"], shuffle=False,
                      verbose=0)
    stripped = clustering.strip_clustering(clustered)
    logits = stripped.predict(data["x_test"], verbose=0)
    out["accuracy"] = np.float64(np.mean(np.argmax(logits, -1) == data["y_test"]))
    kernels = [layer.kernel.numpy() for layer in stripped.layers if hasattr(layer, "kernel")]
    out["unique"] = np.array([len(np.unique(k)) for k in kernels])
    out["zeros"] = np.array([int(np.sum(k == 0)) for k in kernels])
    return out


def main():
    src, dst = sys.argv[1:3]
    with np.load(src) as f:
        data = {k: f[k] for k in f.files}
    weights = [data[f"weight_{i}"] for i in range(int(data["n_weights"]))]
    result = {}
    for i, case in enumerate(json.loads(str(data["cases"]))):
        for key, value in run_case(case, weights, data).items():
            result[f"{key}_{i}"] = value
    np.savez(dst, **result)


if __name__ == "__main__":
    tf.config.set_visible_devices([], "GPU")
    main()
