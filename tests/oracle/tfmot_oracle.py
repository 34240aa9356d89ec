"""The reference: tensorflow-model-optimization (tfmot) on tf_keras, run in its own process.

tfmot switches TensorFlow to tf_keras when imported, so it never shares a
process with Keras 3 code. Usage:

    TF_USE_LEGACY_KERAS=1 python tfmot_oracle.py schedules IN.json OUT.npz
    TF_USE_LEGACY_KERAS=1 python tfmot_oracle.py masks IN.npz OUT.npz
"""

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
import tf_keras  # noqa: E402

sparsity = tfmot.sparsity.keras


def schedules(cases):
    """cases: [{"kind": "constant"|"polynomial", "params": {...}, "steps": [...]}] -> arrays."""
    out = {}
    for i, case in enumerate(cases):
        cls = sparsity.ConstantSparsity if case["kind"] == "constant" else sparsity.PolynomialDecay
        schedule = cls(**case["params"])
        should, value = [], []
        for step in case["steps"]:
            s, v = schedule(np.int64(step))
            should.append(bool(s.numpy()))
            value.append(np.float32(v.numpy()))
        out[f"should_{i}"] = np.array(should)
        out[f"sparsity_{i}"] = np.array(value, dtype=np.float32)
    return out


def build_model(kind, kernel, input_shape):
    layers = tf_keras.layers
    if kind == "dense":
        layer = layers.Dense(kernel.shape[1], use_bias=False)
    elif kind == "conv2d":
        layer = layers.Conv2D(kernel.shape[3], kernel.shape[:2], use_bias=False)
    else:
        raise ValueError(kind)
    model = tf_keras.Sequential([tf_keras.Input(input_shape), layer])
    layer.set_weights([kernel])
    return model


def masks(data):
    """data: npz with n_cases and per case kind, kernel, input_shape, sparsity, block, pooling, m_by_n."""
    out = {}
    for i in range(int(data["n_cases"])):
        kind = str(data[f"kind_{i}"])
        kernel = data[f"kernel_{i}"]
        input_shape = tuple(int(d) for d in data[f"input_shape_{i}"])
        params = {
            "pruning_schedule": sparsity.ConstantSparsity(float(data[f"sparsity_{i}"]), 0, frequency=1),
            "block_size": tuple(int(b) for b in data[f"block_{i}"]),
            "block_pooling_type": str(data[f"pooling_{i}"]),
        }
        m_by_n = tuple(int(v) for v in data[f"m_by_n_{i}"])
        if m_by_n != (0, 0):
            params["sparsity_m_by_n"] = m_by_n
        model = sparsity.prune_low_magnitude(build_model(kind, kernel, input_shape), **params)
        model.compile(tf_keras.optimizers.SGD(0.0), "mse")
        x = np.asarray(data[f"x_{i}"])
        y = model.predict(x, verbose=0)
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
        wrapper = model.layers[0]
        out[f"mask_{i}"] = wrapper.pruning_vars[0][1].numpy()
    return out


def main():
    mode, src, dst = sys.argv[1:4]
    if mode == "schedules":
        with open(src) as f:
            result = schedules(json.load(f))
    elif mode == "masks":
        result = masks(np.load(src))
    else:
        raise SystemExit(f"unknown mode {mode}")
    np.savez(dst, **result)


if __name__ == "__main__":
    main()
