"""tfmot (the reference) pruning whole digits models, in its own process.

`build(K, kind)` builds the same small model with Keras 3 (`K = keras`) or
tf_keras (`K = tf_keras`), so kopt and tfmot prune identical architectures
from identical weights. Run as a script, it prunes each model with tfmot:

    TF_USE_LEGACY_KERAS=1 python tfmot_models.py IN.npz OUT.npz

IN.npz holds the initial weights of each model in `kinds`
(`weights/<kind>/<i>`), the digits data `x`, `y`, and one or more runs (names
in `runs`), each with `<run>/schedule` ("constant" or "polynomial"),
`<run>/target`, `<run>/end_step`, `<run>/frequency`, `<run>/learning_rate` (0:
SGD(0), else Adam), `<run>/epochs`, `<run>/batch_size`, `<run>/samples` (the
first rows of `x` it trains on). OUT.npz holds, for
every weight tfmot pruned, its final mask under `<run>|<kind>:<layer>/<weight>`
(e.g. `train|lstm:rnn/lstm_cell/kernel`).
This file imports tfmot only when run as a script; `build` and `run` are safe to
import next to Keras 3.
"""

import os
import subprocess
import sys

import numpy as np

KINDS = ("depthwise", "lstm", "gru", "simple_rnn", "stacked_rnn", "custom_block")


def _residual_mlp(K):
    """A custom layer holding two Dense layers and a LayerNormalization, as KerasHub's blocks do.

    kopt prunes its Dense kernels by itself; tfmot needs the layer to be a PrunableLayer that returns them.
    """
    bases = (K.layers.Layer,)
    if not K.__name__.startswith("keras"):  # tf_keras, in the oracle's process
        import tensorflow_model_optimization as tfmot

        bases += (tfmot.sparsity.keras.PrunableLayer,)

    class ResidualMLP(*bases):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units
            self.expand = K.layers.Dense(units, activation="relu", name="expand")
            self.project = None
            self.norm = K.layers.LayerNormalization(name="norm")

        def build(self, input_shape):
            self.project = K.layers.Dense(input_shape[-1], name="project")
            self.expand.build(input_shape)
            self.project.build(tuple(input_shape[:-1]) + (self.units,))
            self.norm.build(input_shape)
            self.built = True

        def call(self, x):
            return self.norm(x + self.project(self.expand(x)))

        def get_prunable_weights(self):  # tfmot's PrunableLayer only
            return [self.expand.kernel, self.project.kernel]

        def get_config(self):
            return {**super().get_config(), "units": self.units}

    if K.__name__.startswith("keras"):
        del ResidualMLP.get_prunable_weights  # kopt finds the Dense layers itself
    return ResidualMLP


def build(K, kind):
    """The `kind` digits model, built with the Keras module `K` (keras or tf_keras)."""
    L = K.layers
    if kind == "depthwise":
        return K.Sequential([
            K.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
            L.DepthwiseConv2D(3, padding="same", activation="relu", name="depthwise"),
            L.Conv2D(16, 1, activation="relu", name="pointwise"),
            L.Flatten(name="flatten"),
            L.Dense(10, name="head"),
        ], name=kind)
    if kind == "custom_block":
        return K.Sequential([
            K.Input((8, 8)), L.Dense(16, name="embed"), _residual_mlp(K)(32, name="block"), L.Flatten(name="flatten"),
            L.Dense(10, name="head"),
        ], name=kind)
    rnn = {
        "lstm": lambda: L.LSTM(16, name="rnn"),
        "gru": lambda: L.GRU(16, name="rnn"),
        "simple_rnn": lambda: L.SimpleRNN(16, name="rnn"),
        # Named cells: automatic names depend on how many were made before in the process.
        "stacked_rnn": lambda: L.RNN(L.StackedRNNCells(
            [L.LSTMCell(12, name="lstm_cell"), L.GRUCell(12, name="gru_cell")], name="stacked_rnn_cells"), name="rnn"),
    }[kind]()
    return K.Sequential([K.Input((8, 8)), rnn, L.Dense(10, name="head")], name=kind)


def inputs_for(kind, images):
    """Digits images `(n, 8, 8, 1)` as the model takes them: rows as 8 time steps for the RNNs."""
    return images if kind == "depthwise" else images.reshape(len(images), 8, 8)


def run(data, tmp_path):
    """Runs this script on `data` (a dict for IN.npz) in a subprocess and returns OUT.npz as a dict."""
    src, dst = os.path.join(tmp_path, "in.npz"), os.path.join(tmp_path, "out.npz")
    np.savez(src, **data)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, __file__, src, dst], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"tfmot oracle failed:\n{proc.stderr[-4000:]}")
    with np.load(dst) as result:
        return {k: result[k] for k in result.files}


def _label(layer, weight):
    parts = weight.name.split(":")[0].split("/")
    return "/".join(parts[parts.index(layer.name) + 1:]) if layer.name in parts[:-1] else parts[-1]


def _prune(data, run_name, kind):
    import tensorflow_model_optimization as tfmot
    import tf_keras

    sparsity = tfmot.sparsity.keras
    p = {key.split("/", 1)[1]: data[key] for key in data if key.startswith(f"{run_name}/")}
    model = build(tf_keras, kind)
    model.set_weights([data[f"weights/{kind}/{i}"] for i in range(len(model.weights))])
    target, frequency = float(p["target"]), int(p["frequency"])
    if str(p["schedule"]) == "constant":
        schedule = sparsity.ConstantSparsity(target, 0, frequency=frequency)
    else:
        schedule = sparsity.PolynomialDecay(0.0, target, 0, int(p["end_step"]), frequency=frequency)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    optimizer = (tf_keras.optimizers.SGD(0.0) if float(p["learning_rate"]) == 0
                 else tf_keras.optimizers.Adam(float(p["learning_rate"])))
    pruned.compile(optimizer, tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    n = int(p["samples"])
    pruned.fit(inputs_for(kind, data["x"][:n]), data["y"][:n], batch_size=int(p["batch_size"]), epochs=int(p["epochs"]),
               shuffle=False, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    out = {}
    for wrapper in pruned.layers:
        pruning_vars = getattr(wrapper, "pruning_vars", [])
        labels = [_label(wrapper.layer, weight) for weight, _, _ in pruning_vars]
        if len(set(labels)) < len(labels):
            # tf_keras names a custom layer's sublayer variables under the layer's scope only ('block/kernel'
            # twice): label them by the sublayer that owns them.
            labels = [_owner_label(wrapper.layer, weight, tf_keras) for weight, _, _ in pruning_vars]
        for (weight, mask, _), label in zip(pruning_vars, labels):
            out[f"{run_name}|{kind}:{wrapper.layer.name}/{label}"] = mask.numpy()
    return out


def _owner_label(layer, weight, tf_keras):
    for sub in layer.submodules:
        if isinstance(sub, tf_keras.layers.Layer) and any(w is weight for w in sub.weights):
            return f"{sub.name}/{weight.name.split(':')[0].split('/')[-1]}"
    raise ValueError(f"no sublayer of {layer.name} owns {weight.name}")


def main():
    src, dst = sys.argv[1:3]
    data = dict(np.load(src))
    out = {}
    for run_name in [str(r) for r in data["runs"]]:
        for kind in [str(k) for k in data["kinds"]]:
            out.update(_prune(data, run_name, kind))
    np.savez(dst, **out)


if __name__ == "__main__":
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    main()
