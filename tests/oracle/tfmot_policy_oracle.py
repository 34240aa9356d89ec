"""tfmot's `PruneForLatencyOnXNNPack` (the reference) on the same architectures as kopt, in its own process.

`build(K, kind)` builds one model with Keras 3 (`K = keras`) or tf_keras
(`K = tf_keras`), every layer named, so kopt and tfmot see the same graph.
Run as a script, it prunes each model with tfmot and writes a JSON file:

    TF_USE_LEGACY_KERAS=1 python tfmot_policy_oracle.py OUT.json KIND [KIND ...]

OUT.json maps each kind to `{"allowed": [...], "wrapped": [...]}` (the names of
the layers `allow_pruning` accepts, nested models included, and of the layers
`prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())` wrapped)
or, when the model does not qualify, `{"allowed": [...], "error": [class, message]}`.
The kind "fit" also trains the pruned "guide" model a few steps with
`UpdatePruningStep` and reports each layer's fraction of zero weights after
`strip_pruning` under `"zeros"`.
This file imports tfmot only when run as a script; `build` and `run` are safe to
import next to Keras 3.
"""

import json
import os
import subprocess
import sys

import numpy as np

POSITIVE = ("guide", "inverted_residual")
NOT_QUALIFYING = (
    "mobilenet_v2", "same_padding_stem", "grayscale_stem", "no_pooling", "max_pooling", "strided_same_depthwise",
    "dilated_depthwise", "conv3x3_inside", "strided_pointwise", "swish", "batch_norm_axis_1", "nearest_upsampling",
    "unbuilt", "subclassed",
)
FIT = dict(target=0.75, samples=64, batch_size=16, seed=0)


def _stem(K, inputs, filters=8, padding="valid", pad=True):
    L = K.layers
    x = L.ZeroPadding2D(1, name="stem_pad")(inputs) if pad else inputs
    return L.Conv2D(filters, 3, strides=2, padding=padding, name="stem")(x)


def _separable(K, x, name, filters, strides=1):
    """A MobileNet block: depthwise 3x3 (zero-padded 'valid' when strided), BN, ReLU, pointwise 1x1, BN, ReLU."""
    L = K.layers
    if strides == 2:
        x = L.ZeroPadding2D(1, name=f"{name}_pad")(x)
        x = L.DepthwiseConv2D(3, strides=2, padding="valid", name=f"{name}_dw")(x)
    else:
        x = L.DepthwiseConv2D(3, padding="same", name=f"{name}_dw")(x)
    x = L.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = L.ReLU(name=f"{name}_dw_relu")(x)
    x = L.Conv2D(filters, 1, name=f"{name}_pw")(x)
    x = L.BatchNormalization(name=f"{name}_pw_bn")(x)
    return L.ReLU(name=f"{name}_pw_relu")(x)


def _guide(K):
    """The model of tfmot's "Pruning for on-device inference with XNNPACK" guide: a zero-padded 3x3 stride-2
    stem, depthwise/1x1 blocks, GlobalAveragePooling2D(keepdims=True), Flatten, Dense."""
    L = K.layers
    return K.Sequential([
        K.Input((32, 32, 3), name="image"),
        L.ZeroPadding2D(1, name="stem_pad"),
        L.Conv2D(16, 3, strides=2, padding="valid", name="stem"),
        L.BatchNormalization(name="stem_bn"),
        L.ReLU(name="stem_relu"),
        L.DepthwiseConv2D(3, padding="same", name="block1_dw"),
        L.BatchNormalization(name="block1_dw_bn"),
        L.ReLU(name="block1_dw_relu"),
        L.Conv2D(32, 1, name="block1_pw"),
        L.BatchNormalization(name="block1_pw_bn"),
        L.ReLU(name="block1_pw_relu"),
        L.ZeroPadding2D(1, name="block2_pad"),
        L.DepthwiseConv2D(3, strides=2, padding="valid", name="block2_dw"),
        L.BatchNormalization(name="block2_dw_bn"),
        L.ReLU(name="block2_dw_relu"),
        L.Conv2D(64, 1, name="block2_pw"),
        L.BatchNormalization(name="block2_pw_bn"),
        L.ReLU(name="block2_pw_relu"),
        L.GlobalAveragePooling2D(keepdims=True, name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(10, name="classifier"),
    ], name="guide")


def _inverted_residual(K):
    """MobileNetV2/V3-style blocks: relu6 expansions, residual `Add` and `x + y`, a 5x5 strided depthwise,
    a squeeze-excite branch (its own pooling, `Multiply`), Dropout and a 1x1 Conv2D classifier after the pooling."""
    L = K.layers
    inputs = K.Input((32, 32, 3), name="image")
    x = L.ReLU(6.0, name="stem_relu")(L.BatchNormalization(name="stem_bn")(_stem(K, inputs, 16)))

    def block(x, name, expand, out, residual, kernel=3, strides=1):
        y = L.Activation("relu6", name=f"{name}_expand_relu")(L.Conv2D(expand, 1, name=f"{name}_expand")(x))
        if strides == 2:
            y = L.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(y)
            y = L.DepthwiseConv2D(kernel, strides=2, padding="valid", name=f"{name}_dw")(y)
        else:
            y = L.DepthwiseConv2D(kernel, padding="same", name=f"{name}_dw")(y)
        y = L.ReLU(6.0, name=f"{name}_dw_relu")(L.BatchNormalization(name=f"{name}_dw_bn")(y))
        y = L.BatchNormalization(name=f"{name}_project_bn")(L.Conv2D(out, 1, name=f"{name}_project")(y))
        if residual == "layer":
            return L.Add(name=f"{name}_add")([x, y])
        return x + y if residual == "operator" else y

    x = block(x, "block1", 32, 16, residual="layer")
    x = block(x, "block2", 48, 24, residual=None, kernel=5, strides=2)
    x = block(x, "block3", 48, 24, residual="operator")
    squeeze = L.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)
    squeeze = L.Conv2D(8, 1, activation="relu", name="se_reduce")(squeeze)
    squeeze = L.Conv2D(24, 1, activation="sigmoid", name="se_expand")(squeeze)
    x = L.Multiply(name="se_scale")([x, squeeze])
    x = L.ELU(name="head_elu")(L.Conv2D(64, 1, name="head")(x))
    x = L.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    x = L.Dropout(0.2, name="dropout")(x)
    x = L.Conv2D(10, 1, name="classifier")(x)
    return K.Model(inputs, L.Flatten(name="flatten")(x), name="inverted_residual")


def _small(K, middle, input_shape=(32, 32, 3), stem_padding="valid", stem_pad=True, pooling=True):
    """stem, `middle` layers, then pooling (or Flatten) and Dense: a model that qualifies unless `middle`,
    the stem or the pooling says otherwise."""
    L = K.layers
    inputs = K.Input(input_shape, name="image")
    x = _stem(K, inputs, padding=stem_padding, pad=stem_pad)
    for layer in middle(L):
        x = layer(x)
    x = L.GlobalAveragePooling2D(name="pool")(x) if pooling else L.Flatten(name="flatten")(x)
    return K.Model(inputs, L.Dense(4, name="classifier")(x))


def _subclassed(K):
    class Net(K.Model):
        def __init__(self):
            super().__init__(name="net")
            self.pad = K.layers.ZeroPadding2D(1)
            self.stem = K.layers.Conv2D(8, 3, strides=2, padding="valid")
            self.pool = K.layers.GlobalAveragePooling2D()

        def call(self, x):
            return self.pool(self.stem(self.pad(x)))

    model = Net()
    model(np.zeros((1, 16, 16, 3), "float32"))
    return model


def build(K, kind):
    """The model `kind` built with Keras module `K` (keras or tf_keras)."""
    pw = lambda L: [L.Conv2D(8, 1, name="pw")]  # noqa: E731
    builders = {
        "guide": lambda: _guide(K),
        "inverted_residual": lambda: _inverted_residual(K),
        "mobilenet_v2": lambda: K.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(96, 96, 3)),
        "same_padding_stem": lambda: _small(K, pw, stem_padding="same", stem_pad=False),
        "grayscale_stem": lambda: _small(K, pw, input_shape=(32, 32, 1)),
        "no_pooling": lambda: _small(K, pw, pooling=False),
        "max_pooling": lambda: _small(K, lambda L: [L.MaxPooling2D(name="max_pool"), L.Conv2D(8, 1, name="pw")]),
        "strided_same_depthwise": lambda: _small(
            K, lambda L: [L.DepthwiseConv2D(3, strides=2, padding="same", name="dw"), L.Conv2D(8, 1, name="pw")]),
        "dilated_depthwise": lambda: _small(
            K, lambda L: [L.DepthwiseConv2D(3, dilation_rate=2, padding="same", name="dw"), L.Conv2D(8, 1, name="pw")]),
        "conv3x3_inside": lambda: _small(K, lambda L: [L.Conv2D(8, 3, padding="same", name="conv3x3")]),
        "strided_pointwise": lambda: _small(K, lambda L: [L.Conv2D(8, 1, strides=2, name="pw")]),
        "swish": lambda: _small(K, lambda L: [L.Conv2D(8, 1, name="pw"), L.Activation("swish", name="swish")]),
        "batch_norm_axis_1": lambda: _small(K, lambda L: [L.BatchNormalization(axis=1, name="bn"), *pw(L)]),
        "nearest_upsampling": lambda: _small(K, lambda L: [L.UpSampling2D(name="upsample"), *pw(L)]),
        "unbuilt": lambda: K.Sequential([K.layers.Conv2D(8, 1, name="pw")]),
        "subclassed": lambda: _subclassed(K),
    }
    return builders[kind]()


def fit_data(seed=FIT["seed"], samples=FIT["samples"]):
    """The random images and labels both the kopt test and the oracle train the "guide" model on."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(samples, 32, 32, 3)).astype("float32"), rng.integers(0, 10, samples)


def zero_fractions(model):
    """`{layer name: fraction of zeros in its kernel}` for every layer with a kernel (or depthwise kernel)."""
    result = {}
    for layer in model.layers:
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = kernel if kernel is not None else getattr(layer, "kernel", None)
        if kernel is not None:
            result[layer.name] = float(np.mean(np.asarray(kernel) == 0))
    return result


def run(kinds, tmp_path):
    """Runs this script for `kinds` in a subprocess; returns the parsed OUT.json."""
    dst = os.path.join(tmp_path, "tfmot_policy.json")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, __file__, dst, *kinds], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"tfmot policy oracle failed:\n{proc.stderr[-4000:]}")
    with open(dst) as f:
        return json.load(f)


def _walk(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers") and not hasattr(layer, "pruning_vars"):
            yield from _walk(layer)


def _tfmot_result(kind, tf_keras, sparsity):
    model = build(tf_keras, kind)
    policy = sparsity.PruneForLatencyOnXNNPack()
    result = {"allowed": sorted({layer.name for layer in _walk(model) if policy.allow_pruning(layer)})}
    try:
        if kind == "subclassed":  # prune_low_magnitude rejects any subclassed model before asking the policy
            policy.ensure_model_supports_pruning(model)
        pruned = sparsity.prune_low_magnitude(model, pruning_policy=policy)
    except ValueError as error:
        result["error"] = [type(error).__name__, str(error)]
        return result
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    result["wrapped"] = sorted(layer.layer.name for layer in _walk(pruned) if isinstance(layer, PruneLowMagnitude))
    return result


def _tfmot_fit(tf_keras, sparsity):
    tf_keras.utils.set_random_seed(FIT["seed"])
    pruned = sparsity.prune_low_magnitude(
        build(tf_keras, "guide"), pruning_policy=sparsity.PruneForLatencyOnXNNPack(),
        pruning_schedule=sparsity.ConstantSparsity(FIT["target"], 0, frequency=1))
    pruned.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = fit_data()
    pruned.fit(x, y, batch_size=FIT["batch_size"], epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    return {"zeros": zero_fractions(sparsity.strip_pruning(pruned))}


def main():
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow_model_optimization as tfmot
    import tf_keras

    sparsity = tfmot.sparsity.keras
    dst, kinds = sys.argv[1], sys.argv[2:]
    out = {kind: _tfmot_fit(tf_keras, sparsity) if kind == "fit" else _tfmot_result(kind, tf_keras, sparsity)
           for kind in kinds}
    with open(dst + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main()
