"""Coverage of `keras.applications`: every family through prune, QAT int8 and post-training int8.

For the smallest member of each family Keras 3.15 ships (`weights=None`, small inputs, 10 classes, logits
out), this builds the model and trains it for a few steps on random labels (straight from its initializers
its logits are near-constant), then:

- prune: `prune_low_magnitude` (50%, ConstantSparsity) -> fit -> `strip_pruning`, sparsity of every pruned weight;
- QAT int8: `quantize_model` -> fit -> `to_tflite(quantization="int8")`, without representative data;
- PTQ int8: `to_tflite(model, representative_data=...)`.

Each file is run in LiteRT's interpreter and compared with the Keras model it came from (SQNR, decisive top-1
agreement, bytes). Run `python benchmarks/coverage.py` for the table in RESULTS.md (`--only MobileNet,VGG16`
for a subset; `--json out.json` for the figures). tests/test_applications.py runs `measure` for each family.
"""

import argparse
import json
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
    # 64x64: at 32x32 the last stages run on 1x1 maps, where BatchNormalization over a few values per channel
    # makes the briefly trained network amplify any error (see REFRESH_STATISTICS).
    "EfficientNetB0": ("EfficientNetB0", dict(input_shape=(64, 64, 3))),
    "EfficientNetV2B0": ("EfficientNetV2B0", dict(input_shape=(64, 64, 3))),
    "DenseNet121": ("DenseNet121", dict(input_shape=(32, 32, 3))),
    "NASNetMobile": ("NASNetMobile", dict(input_shape=(32, 32, 3))),
    "Xception": ("Xception", dict(input_shape=(71, 71, 3))),
    "InceptionV3": ("InceptionV3", dict(input_shape=(75, 75, 3))),
    "InceptionResNetV2": ("InceptionResNetV2", dict(input_shape=(75, 75, 3))),
    "ConvNeXtTiny": ("ConvNeXtTiny", dict(input_shape=(32, 32, 3))),
    "VGG16": ("VGG16", dict(input_shape=(32, 32, 3))),
}


# Families whose BatchNormalization statistics are recomputed on the samples after the training steps.
# EfficientNetV2B0 after 4 epochs on 16-image batches: moving variances 4-150x (up to 843x) below the
# variance of the inputs they see in inference, so inference-mode activations reach std 3-14 instead of 1,
# the squeeze-excite gates act as on/off switches, and 40 dB of input noise comes out at 10 dB in pure float
# (no quantization): no int8 file could agree with such a network (PTQ measured 3.4 dB, each op's own int8
# error ideal). With fresh statistics at 64x64: 29 dB out for 40 dB in.
REFRESH_STATISTICS = {"EfficientNetB0", "EfficientNetV2B0"}


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
    # run_eagerly: a few steps run eagerly in seconds, where tracing a train function of these graphs takes
    # minutes (NASNetMobile: ~2 min per fit); what is measured is the conversion, not the training loop.
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  run_eagerly=True)
    model.fit(x, rng.integers(0, 10, samples), batch_size=16, epochs=4, verbose=0)
    if name in REFRESH_STATISTICS:
        dropouts = [layer for layer in walk_layers(model) if isinstance(layer, keras.layers.Dropout)]
        rates = [layer.rate for layer in dropouts]
        for layer in batchnorms:
            layer.momentum = 0.0
        for layer in dropouts:
            layer.rate = 0.0
        model(x, training=True)  # statistics of the trained network on all the samples at once
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
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


def _outputs(model, x):
    """The model's outputs on `x`, eagerly (no predict function to trace)."""
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))


def run_qat(model, x, on_mismatch="raise"):
    """`quantize_model` -> one epoch learning the float model's outputs -> validated int8 file; `(qat, file)`."""
    import keras

    import kopt

    qat = kopt.quantization.quantize_model(model)
    # Adam moves every weight by ~lr in its first steps whatever the gradient: at 1e-4, VGG16's input
    # dependence was wiped out (logit std over inputs 0.09 -> 0.008) and the EfficientNets' QAT models turned
    # so sensitive that their own int8 files agreed at 8-10 dB (16 dB at 1e-6). A fine-tune's small rate.
    qat.compile(keras.optimizers.Adam(1e-6), "mse", run_eagerly=True)  # run_eagerly: see build
    qat.fit(x, _outputs(model, x), batch_size=16, epochs=1, verbose=0)  # learn the float outputs
    # No representative_data: QAT learned every range the file needs (LayerNormalization's internals included).
    tflite = kopt.convert.to_tflite(qat, validation_data=x, on_mismatch=on_mismatch)
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
    pruned.compile(keras.optimizers.Adam(1e-4), "mse", run_eagerly=True)  # see build
    pruned.fit(x, _outputs(model, x), batch_size=16, epochs=1, verbose=0,
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


def measure(name, samples=32, prune=True):
    """Builds family `name` and runs it through prune, QAT int8 and PTQ int8.

    Returns:
        A JSON-able dict: `params`, `seconds`, and per path (`prune`, `qat`, `ptq`) either the measurements
        (`prune`: `pruned` and `depthwise`, {layer: [fraction of zeros, kernel size]}; `qat`/`ptq`: `compare`'s
        figures plus `passed`, kopt's own validation verdict) or `{"error": "..."}`.
    """
    start = time.time()
    model, x = build(name, samples=samples)
    result = {"name": name, "params": int(model.count_params())}
    try:
        if prune:
            pruned, depthwise = zero_fractions(run_prune(model, x))
            result["prune"] = {"pruned": pruned, "depthwise": depthwise}
    except Exception as error:  # noqa: BLE001 - the table reports failures
        result["prune"] = {"error": f"{type(error).__name__}: {error}"}
    for path, fn in (("qat", run_qat), ("ptq", run_ptq)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a mismatch warns; the figures say it
                outcome = fn(model, x, on_mismatch="warn")
            reference, tflite = outcome if isinstance(outcome, tuple) else (model, outcome)
            result[path] = dict(compare(reference, tflite, x), passed=bool(tflite.report.passed))
        except Exception as error:  # noqa: BLE001
            result[path] = {"error": f"{type(error).__name__}: {error}"}
    result["seconds"] = time.time() - start
    return result


def _row(result, samples):
    cells = []
    prune = result.get("prune")
    if prune is None:
        cells.append("not run (--no-prune)")
    elif "error" in prune:
        cells.append(f"FAIL {prune['error'][:80]}")
    else:
        values = [fraction for fraction, _ in prune["pruned"].values()]
        depthwise = prune["depthwise"]
        dense = f", depthwise {max(f for f, _ in depthwise.values()):.2f}" if depthwise else ""
        cells.append(f"{min(values):.3f} / {max(values):.3f} ({len(values)} kernels{dense})")
    for path in ("qat", "ptq"):
        m = result[path]
        if "error" in m:
            cells.append(f"FAIL {m['error'][:120]}")
            continue
        top1 = "n/a" if m["top1"] is None else f"{m['top1']:.0%}"
        verdict = "pass" if m["passed"] else "**fail**"
        cells.append(f"{m['sqnr_db']:.1f} / {m['varying_sqnr_db']:.1f}, {top1} ({m['decisive']}/{samples}), "
                     f"{m['bytes'] / 1024:.0f}, kopt validation {verdict}")
    float_kb = 4 * result["params"] / 1024  # float32 weights (the file adds little)
    return (f"| {result['name']} | {result['params']:,} | " + " | ".join(cells)
            + f" | {float_kb:.0f} | {result['seconds']:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated family names (default: all)")
    parser.add_argument("--samples", type=int, default=32, help="images to train, calibrate and compare on")
    parser.add_argument("--json", default=None, help="also write the measurements to this file")
    parser.add_argument("--no-prune", action="store_true", help="only the QAT and post-training int8 paths")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    names = [n for n in args.only.split(",") if n] or list(SPECS)
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(SPECS)}")
    print("| model | params | prune 50%: min / max zeros of pruned kernels | QAT int8: SQNR / varying-part SQNR "
          "dB, top-1 (decisive), KB | PTQ int8: same | float32 weights KB | seconds |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for name in names:
        results.append(measure(name, args.samples, prune=not args.no_prune))
        print(_row(results[-1], args.samples), flush=True)
        keras.backend.clear_session()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
