"""The reference for quantization schemes: tfmot's PQAT / CQAT / PCQAT / plain QAT on tf_keras, in its own process.

Usage (see `run_scheme_oracle`):

    TF_USE_LEGACY_KERAS=1 python tfmot_scheme_oracle.py SCHEME IN.npz OUT.npz

IN.npz holds a small CNN's weights (`conv_kernel`, `conv_bias`, `dense_kernel`, `dense_bias`), data `x`, `y` and
`epochs`, `learning_rate`; the model is Conv2D(C, 3, relu) -> Flatten -> Dense(classes). SCHEME is `default`,
`prune_preserve`, `cluster_preserve` or `prune_cluster_preserve`. OUT.npz gets the kernels the layers compute with
after the fit (`conv_kernel`, `dense_kernel`; for CQAT after `strip_clustering_cqat`).
"""

import os
import subprocess
import sys

import numpy as np

HERE = os.path.abspath(__file__)


def run_scheme_oracle(scheme, src, dst):
    """Runs this file in a separate process (tfmot must not share a process with Keras 3); returns OUT.npz."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, HERE, scheme, str(src), str(dst)], env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"tfmot scheme oracle failed ({scheme}):\n{proc.stderr[-4000:]}")
    with np.load(dst) as result:
        return {k: result[k] for k in result.files}


def _main(scheme, src, dst):
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    tf.random.set_seed(0)
    data = dict(np.load(src))
    conv_kernel, dense_kernel = data["conv_kernel"], data["dense_kernel"]
    layers = tf_keras.layers
    model = tf_keras.Sequential([
        tf_keras.Input(data["x"].shape[1:]),
        layers.Conv2D(conv_kernel.shape[-1], conv_kernel.shape[:2], activation="relu", name="conv"),
        layers.Flatten(),
        layers.Dense(dense_kernel.shape[-1], name="dense"),
    ])
    model.get_layer("conv").set_weights([conv_kernel, data["conv_bias"]])
    model.get_layer("dense").set_weights([dense_kernel, data["dense_bias"]])

    quantize = tfmot.quantization.keras
    combine = tfmot.experimental.combine
    schemes = {
        "default": quantize.default_8bit.Default8BitQuantizeScheme(),
        "prune_preserve": combine.Default8BitPrunePreserveQuantizeScheme(),
        "cluster_preserve": combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False),
        "prune_cluster_preserve": combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True),
    }
    qat = quantize.quantize_apply(quantize.quantize_annotate_model(model), schemes[scheme])
    qat.compile(tf_keras.optimizers.Adam(float(data["learning_rate"])),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(data["x"], data["y"], batch_size=16, epochs=int(data["epochs"]), verbose=0, shuffle=False)
    if "cluster" in scheme:
        qat = combine.strip_clustering_cqat(qat)
    out = {}
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and inner.name in ("conv", "dense"):
            # The wrapper puts its quantized tensor in `inner.kernel` while tracing: read the variable.
            (kernel,) = [w for w in layer.weights if w.name.endswith("kernel:0") and "depthwise" not in w.name]
            out[f"{inner.name}_kernel"] = kernel.numpy()
    np.savez(dst, **out)


if __name__ == "__main__":
    _main(*sys.argv[1:4])
