"""Coverage of `keras.applications`: every family through prune, QAT int8 and post-training int8.

For the smallest member of each family Keras 3.15 ships (`weights=None`, small inputs, 10 classes, logits
out), this builds the model and trains it for a few steps on random labels (straight from its initializers
its logits are near-constant), then:

- prune: `prune_low_magnitude` (50%, ConstantSparsity) -> fit -> `strip_pruning`, sparsity of every pruned weight;
- QAT int8: `quantize_model` -> fit -> `to_tflite(quantization="int8")`;
- PTQ int8: `to_tflite(model, representative_data=...)`.

Each file is run in LiteRT's interpreter and compared with the Keras model it came from (SQNR, decisive top-1
agreement, bytes). Run `python benchmarks/coverage.py` for the table in RESULTS.md (`--only MobileNet,VGG16`
for a subset). tests/quantization/test_applications.py uses the same models.
"""

import argparse
import os
import sys
import time
import warnings

# name -> (constructor in keras.applications, keyword arguments): the smallest member of each family, at the
# smallest input it accepts (or 32x32).
SPECS = {
    "MobileNet": ("MobileNet", dict(input_shape=(32, 32, 3), alpha=0.25)),
    "MobileNetV2": ("MobileNetV2", dict(input_shape=(32, 32, 3), alpha=0.35)),
    "MobileNetV3Small": ("MobileNetV3Small", dict(input_shape=(32, 32, 3), alpha=0.75)),
    "MobileNetV3Large": ("MobileNetV3Large", dict(input_shape=(32, 32, 3), alpha=0.75)),
    "ResNet50": ("ResNet50", dict(input_shape=(32, 32, 3))),
    "ResNet50V2": ("ResNet50V2", dict(input_shape=(32, 32, 3))),
    "EfficientNetB0": ("EfficientNetB0", dict(input_shape=(32, 32, 3))),
    "EfficientNetV2B0": ("EfficientNetV2B0", dict(input_shape=(32, 32, 3))),
    "DenseNet121": ("DenseNet121", dict(input_shape=(32, 32, 3))),
    "NASNetMobile": ("NASNetMobile", dict(input_shape=(32, 32, 3))),
    "Xception": ("Xception", dict(input_shape=(71, 71, 3))),
    "InceptionV3": ("InceptionV3", dict(input_shape=(75, 75, 3))),
    "InceptionResNetV2": ("InceptionResNetV2", dict(input_shape=(75, 75, 3))),
    "ConvNeXtTiny": ("ConvNeXtTiny", dict(input_shape=(32, 32, 3))),
    "VGG16": ("VGG16", dict(input_shape=(32, 32, 3))),
}


def build(name, samples=32, seed=0):
    """The family's smallest model (logits out), trained for a few steps, and input samples.

    Returns:
        `(model, x)`: a built Functional model and `samples` random images in the range it expects.
    """
    import keras
    import numpy as np

    constructor, kwargs = SPECS[name]
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, constructor)(
        weights=None, classes=10, classifier_activation=None, **kwargs)
    shape = tuple(model.inputs[0].shape[1:])
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(samples, *shape)).astype("float32")
    if name not in ("MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0", "EfficientNetV2B0", "ConvNeXtTiny"):
        x = x / 127.5 - 1.0  # the other families take preprocessed inputs
    # A few steps of training, with BatchNormalization statistics that follow them: a network straight
    # from its initializers (or with statistics left near their initial values) gives the same logits
    # for every input (MobileNet: std 4e-18), which says nothing about a quantized file.
    from kopt._keras.clone import walk_layers

    for layer in walk_layers(model):
        if type(layer).__name__ == "LayerScale":
            # ConvNeXt: LayerScale starts at 1e-6, so its blocks add nothing to the residual stream and an error
            # in them could not show in the outputs; trained ConvNeXts have scales of order 0.1-1.
            layer.gamma.assign(np.full(layer.gamma.shape, 0.3, "float32"))
    batchnorms = [layer for layer in walk_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    normalized = [layer for layer in walk_layers(model)
                  if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))]
    if not normalized:
        # VGG: with no BatchNormalization, Glorot-initialized activations fade through its 16 layers (logits
        # vary by 3e-5 between inputs); He initialization, made for ReLU networks, keeps them (0.09 on logits
        # of mean size 0.8). Training on random labels would only teach it a per-class offset (0.005), and
        # with no statistics to adjust, it is left untrained.
        for i, layer in enumerate(walk_layers(model)):
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                layer.kernel.assign(keras.initializers.HeNormal(seed=seed * 1000 + i)(layer.kernel.shape))
        return model, x
    for layer in batchnorms:
        layer.momentum = 0.5
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, rng.integers(0, 10, samples), batch_size=16, epochs=4, verbose=0)
    for layer in batchnorms:
        layer.momentum = 0.99
    return model, x


def compare(model, tflite, x):
    """SQNR (dB) and decisive top-1 agreement of a .tflite file vs the Keras model, computed here from scratch."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=bytes(tflite))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    got = []
    for sample in x:
        value = sample[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype("float64")
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        got.append(y[0])
    got = np.stack(got)
    reference = np.asarray(model(x, training=False), "float64")

    def sqnr_db(signal, noise):
        return float(10 * np.log10(max(np.sum(signal ** 2), 1e-30) / max(np.sum(noise ** 2), 1e-30)))

    sqnr = sqnr_db(reference, reference - got)
    # Briefly trained networks put most of their output in a per-class offset shared by every input;
    # the input-dependent part (minus the mean over samples) is what a broken file would lose.
    varying = sqnr_db(reference - reference.mean(0), reference - got)
    top2 = np.sort(reference, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 0.05 * np.std(reference)
    agreement = float(np.mean(reference.argmax(-1)[decisive] == got.argmax(-1)[decisive])) if decisive.any() else None
    return {"sqnr_db": sqnr, "varying_sqnr_db": varying, "top1": agreement, "decisive": int(decisive.sum()),
            "bytes": len(tflite)}


def run_qat(model, x, on_mismatch="raise"):
    """`quantize_model` -> one epoch learning the float model's outputs -> validated int8 file; `(qat, file)`."""
    import keras

    import kopt
    from kopt._keras.clone import walk_layers

    qat = kopt.quantization.quantize_model(model)
    # Adam moves every weight by ~lr in its first steps whatever the gradient: 1e-4 is harmless with
    # BatchNormalization but wipes out VGG16's input dependence (logit std over inputs 0.09 -> 0.008).
    normalized = any(isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))
                     for layer in walk_layers(model))
    qat.compile(keras.optimizers.Adam(1e-4 if normalized else 1e-6), "mse")
    qat.fit(x, model.predict(x, verbose=0), batch_size=16, epochs=1, verbose=0)  # learn the float outputs
    tflite = kopt.convert.to_tflite(qat, representative_data=x, validation_data=x, on_mismatch=on_mismatch)
    return qat, tflite


def run_ptq(model, x, on_mismatch="raise"):
    import kopt

    return kopt.convert.to_tflite(model, representative_data=x, validation_data=x, on_mismatch=on_mismatch)


def run_prune(model, x, sparsity=0.5):
    """Prunes to `sparsity` (ConstantSparsity from step 0) with one fit, strips; returns the stripped model."""
    import keras

    import kopt

    pruned = kopt.sparsity.prune_low_magnitude(
        model, pruning_schedule=kopt.sparsity.ConstantSparsity(sparsity, 0, frequency=1))
    pruned.compile(keras.optimizers.Adam(1e-4), "mse")
    pruned.fit(x, model.predict(x, verbose=0), batch_size=16, epochs=1, verbose=0,
               callbacks=[kopt.sparsity.UpdatePruningStep()])
    return kopt.sparsity.strip_pruning(pruned)


def zero_fractions(model):
    """`(pruned, depthwise)`: fractions of zeros of the Conv/Dense/pointwise kernels and of the depthwise kernels."""
    import keras
    import numpy as np

    from kopt._keras.clone import walk_layers

    L = keras.layers
    pruned, depthwise = {}, {}
    for layer in walk_layers(model):
        if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.Dense, L.SeparableConv2D)) and layer.built:
            kernel = layer.pointwise_kernel if isinstance(layer, L.SeparableConv2D) else layer.kernel
            kernel = keras.ops.convert_to_numpy(kernel)
            target = depthwise if isinstance(layer, L.DepthwiseConv2D) else pruned
            target[layer.name] = (float(np.mean(kernel == 0)), kernel.size)
    return pruned, depthwise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated family names (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    import kopt

    names = [n for n in args.only.split(",") if n] or list(SPECS)
    print("| model | params | prune 50%: min / max zeros of pruned kernels | QAT int8: SQNR / varying-part SQNR "
          "dB, top-1 (decisive), KB | PTQ int8: same | float32 weights KB | seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        start = time.time()
        model, x = build(name)
        cells = []
        try:
            pruned, depthwise = zero_fractions(run_prune(model, x))
            values = [fraction for fraction, _ in pruned.values()]
            dense = f", depthwise {max(f for f, _ in depthwise.values()):.2f}" if depthwise else ""
            cells.append(f"{min(values):.3f} / {max(values):.3f} ({len(values)} kernels{dense})")
        except Exception as error:  # noqa: BLE001 - the table reports failures
            cells.append(f"FAIL {type(error).__name__}: {str(error)[:80]}")
        for fn in (run_qat, run_ptq):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = fn(model, x, on_mismatch="warn")
                reference, tflite = result if isinstance(result, tuple) else (model, result)
                m = compare(reference, tflite, x)
                top1 = "n/a" if m["top1"] is None else f"{m['top1']:.0%}"
                verdict = "pass" if tflite.report.passed else "**fail**"
                cells.append(f"{m['sqnr_db']:.1f} / {m['varying_sqnr_db']:.1f}, {top1} ({m['decisive']}/{len(x)}), "
                             f"{m['bytes'] / 1024:.0f}, kopt validation {verdict}")
            except Exception as error:  # noqa: BLE001
                cells.append(f"FAIL {type(error).__name__}: {str(error)[:120]}")
        float_kb = 4 * model.count_params() / 1024  # float32 weights (the file adds little)
        print(f"| {name} | {model.count_params():,} | " + " | ".join(cells)
              + f" | {float_kb:.0f} | {time.time() - start:.0f} |", flush=True)
        keras.backend.clear_session()


if __name__ == "__main__":
    sys.exit(main())
