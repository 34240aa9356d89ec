"""kopt's clustering against tfmot's (tf_keras, its own process), from the same trained digits CNN.

- The deterministic initializations (LINEAR, DENSITY_BASED, k-means++), also sparsity-preserving and per channel,
  give the same centroids, so the clustered models compute the same logits before any fine-tuning.
- After the same fine-tuning (2 epochs, Adam 1e-4, no shuffling) both strip to kernels with the same number of
  distinct values, and their accuracies are within 1 point.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from kopt import clustering

ORACLE = os.path.join(os.path.dirname(__file__), "..", "oracle", "tfmot_clustering_oracle.py")

CASES = [
    {"init": "LINEAR", "clusters": 8, "epochs": 0},
    {"init": "DENSITY_BASED", "clusters": 8, "epochs": 0},
    {"init": "KMEANS_PLUS_PLUS", "clusters": 16, "epochs": 0},
    {"init": "LINEAR", "clusters": 8, "preserve_sparsity": True, "epochs": 0},
    {"init": "KMEANS_PLUS_PLUS", "clusters": 4, "per_channel": True, "epochs": 0},
    {"init": "KMEANS_PLUS_PLUS", "clusters": 8, "epochs": 2},
]


def _oracle(data, tmp_path):
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, **data)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, ORACLE, str(src), str(dst)], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"tfmot clustering oracle failed:\n{proc.stderr[-4000:]}")
    with np.load(dst) as out:
        return {k: out[k] for k in out.files}


@pytest.fixture(scope="module")
def compared(digits_cnn, digits_data, tmp_path_factory):
    (x_train, y_train), (x_test, y_test) = digits_data
    weights = digits_cnn.get_weights()
    data = {f"weight_{i}": w for i, w in enumerate(weights)}
    data.update(n_weights=len(weights), x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                cases=json.dumps(CASES))
    reference = _oracle(data, tmp_path_factory.mktemp("tfmot_clustering"))
    ours = []
    for case in CASES:
        keras.utils.set_random_seed(0)
        model = clustering.experimental.cluster_weights(
            digits_cnn, case["clusters"], case["init"], preserve_sparsity=case.get("preserve_sparsity", False),
            cluster_per_channel=case.get("per_channel", False))
        wrappers = [layer for layer in model.layers if isinstance(layer, clustering.ClusterWeights)]
        result = {"centroids": [w.cluster_centroids[0].numpy() for w in wrappers],
                  "logits": model.predict(x_test, verbose=0)}
        if case["epochs"]:
            model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x_train, y_train, batch_size=32, epochs=case["epochs"], shuffle=False, verbose=0)
        stripped = clustering.strip_clustering(model)
        kernels = [layer.kernel.numpy() for layer in stripped.layers if hasattr(layer, "kernel")]
        result["accuracy"] = float(np.mean(np.argmax(stripped.predict(x_test, verbose=0), -1) == y_test))
        result["unique"] = [len(np.unique(k)) for k in kernels]
        result["zeros"] = [int(np.sum(k == 0)) for k in kernels]
        result["kernels"] = kernels
        ours.append(result)
    return reference, ours


@pytest.mark.parametrize("i", range(len(CASES)), ids=[
    f"{c['init']}-{c['clusters']}" + ("-sparse" if c.get("preserve_sparsity") else "")
    + ("-per_channel" if c.get("per_channel") else "") + (f"-{c['epochs']}epochs" if c["epochs"] else "")
    for c in CASES])
def test_same_centroids_and_logits_as_tfmot(compared, i):
    reference, ours = compared
    centroids = ours[i]["centroids"]
    assert len(centroids) == 4  # both Conv2D and both Dense layers are clustered
    for j, mine in enumerate(centroids):
        theirs = reference[f"centroids_{j}_{i}"]
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours[i]["logits"], reference[f"logits_{i}"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_same_number_of_values_after_stripping(compared, i):
    reference, ours = compared
    case = CASES[i]
    assert ours[i]["unique"] == list(reference[f"unique_{i}"])
    if not case.get("per_channel"):
        # Not more than N values (tfmot's count is the same): N, plus nothing else.
        assert max(ours[i]["unique"]) <= case["clusters"]
    else:
        first_conv = ours[i]["kernels"][0]
        assert max(len(np.unique(first_conv[..., c])) for c in range(first_conv.shape[-1])) <= case["clusters"]
    if case.get("preserve_sparsity"):
        assert ours[i]["zeros"] == list(reference[f"zeros_{i}"])


def test_fine_tuned_accuracy_within_a_point_of_tfmot(compared):
    reference, ours = compared
    i = next(i for i, c in enumerate(CASES) if c["epochs"])
    assert abs(ours[i]["accuracy"] - float(reference[f"accuracy_{i}"])) <= 0.01
    assert ours[i]["accuracy"] >= 0.9
