"""Every KerasHub family with a classifier task through kopt: prune, QAT int8, post-training int8 and QDQ ONNX.

Each family is a tiny random-weight model built from its constructors (benchmarks/hub_families.py; nothing is
downloaded), text models called on a fixed sequence length of 16 (`with_fixed_length`), trained for a few steps on
synthetic data, then:
- prune: `prune_low_magnitude` at 50% (ConstantSparsity, every step), one epoch, `strip_pruning`. Reported: the
  kernels pruned to 50% out of every Dense / EinsumDense / Conv* / Embedding kernel of the model (counted on the
  model's own layers, at any depth; depthwise kernels are left dense by default, as tfmot does), and whether the
  stripped model computes what the pruned one did.
- qat: `quantize_model`, one epoch, `to_tflite` (int8, with `representative_data` for the tensors QAT has no range
  for, inside attention), validated in LiteRT against the QAT model.
- ptq: `to_tflite` of the float model (int8, calibrated), validated against it.
- onnx: `to_onnx` of the QAT model (QDQ), validated in onnxruntime against it.

Each family runs in its own process. Every step reports its SQNR (dB) and decisive top-1 agreement, or the first
line of its error.

    .venv/bin/python benchmarks/coverage_hub.py [--only Bert ViT] [--json out.json]
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SAMPLES = 96


def synthetic(model, n, seed=0):
    """`n` samples for `model`'s inputs: token ids in the tiny vocabulary, masks with padding, images in [0, 1)."""
    import numpy as np
    from hub_families import SEQ_LEN, VOCAB

    rng = np.random.default_rng(seed)
    names = [t.name for t in model.inputs]
    if len(names) == 1 and "int" not in str(model.inputs[0].dtype):
        return rng.random((n, *model.inputs[0].shape[1:])).astype("float32")
    length = model.inputs[0].shape[1] or SEQ_LEN
    mask = np.ones((n, length), "int32")
    mask[n // 2:, -3:] = 0
    data = {"token_ids": rng.integers(1, VOCAB, (n, length)).astype("int32") * mask, "padding_mask": mask,
            "segment_ids": np.zeros((n, length), "int32")}
    return {name: data[name] for name in names}


def with_fixed_length(model):
    """A text model called on inputs of a fixed sequence length, as a deployed model takes them.

    KerasHub's backbones leave the length open; then the positions and causal masks they compute (RANGE, CAST,
    ABS on position ids) stay ops of the file, which have no int8 kernels. With the length fixed the converter
    folds them into constants.
    """
    import keras
    from hub_families import SEQ_LEN

    if not any("int" in str(t.dtype) for t in model.inputs):
        return model
    inputs = {t.name: keras.Input((SEQ_LEN,), dtype=t.dtype, name=t.name) for t in model.inputs}
    structure = model.input
    if isinstance(structure, dict):
        args = {key: inputs[tensor.name] for key, tensor in structure.items()}
    else:
        args = [inputs[t.name] for t in model.inputs]
    return keras.Model(inputs, model(args), name=f"{model.name}_fixed_length")


def _take(x, start, stop):
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def _kernel_count(model):
    import keras

    from kopt._keras.sublayers import all_sublayers

    L = keras.layers
    count = 0
    for layer in all_sublayers(model):
        if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
            continue
        if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
            count += 1  # the pointwise kernel
        elif isinstance(layer, (L.Dense, L.EinsumDense, L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose,
                                L.Conv2DTranspose, L.Embedding)):
            count += 1
    return count


def _report(result):
    report = result.report
    return {"sqnr_db": round(float(report.sqnr_db), 1),
            "top1": None if report.top1_agreement is None else round(float(report.top1_agreement), 4),
            "bytes": len(result)}


def _step(fn):
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as error:  # recorded, not raised: the table says what failed and why
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        out = {"error": f"{type(error).__name__}: {first[:300]}", "trace": traceback.format_exc()[-1500:]}
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def measure(name):
    import keras
    import numpy as np
    from hub_families import FAMILIES

    from kopt import convert, quantization, sparsity

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = with_fixed_length(FAMILIES[name]()[0])
    x = synthetic(model, SAMPLES)
    y = np.random.default_rng(1).integers(0, 2, SAMPLES)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    calibration, held = _take(x, 0, 64), _take(x, 64, SAMPLES)
    result = {"family": name, "parameters": int(model.count_params())}

    def prune():
        pruned = sparsity.prune_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0, frequency=1))
        pruned.compile(keras.optimizers.Adam(1e-4), loss)
        pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
        stripped = sparsity.strip_pruning(pruned)
        reached = [k for k, v in sparsity.get_sparsity(stripped).items() if v >= 0.45]
        difference = float(np.max(np.abs(stripped.predict(held, verbose=0) - pruned.predict(held, verbose=0))))
        return {"pruned": len(reached), "kernels": _kernel_count(model), "strip_max_abs_difference": difference}

    def qat():
        quantized = quantization.quantize_model(model)
        quantized.compile(keras.optimizers.Adam(1e-5), loss)
        quantized.fit(x, y, batch_size=16, epochs=1, verbose=0)
        out = _report(convert.to_tflite(quantized, representative_data=calibration, validation_data=held))
        out["onnx"] = _step(lambda: _report(convert.to_onnx(quantized, validation_data=held)))
        return out

    def ptq():
        return _report(convert.to_tflite(model, representative_data=calibration, validation_data=held))

    result["prune"] = _step(prune)
    result["qat"] = _step(qat)
    result["onnx"] = result["qat"].pop("onnx", {"error": "QAT failed before the export"})
    result["ptq"] = _step(ptq)
    return result


def _cell(step):
    if "error" in step:
        return "FAIL: " + step["error"].replace("|", "/")[:160]
    if "pruned" in step:
        same = "same outputs" if step["strip_max_abs_difference"] < 1e-4 else \
            f"stripped differs by {step['strip_max_abs_difference']:.1e}"
        return f"{step['pruned']}/{step['kernels']} kernels, {same}"
    top1 = "" if step["top1"] is None else f", {step['top1']:.1%}"
    return f"{step['sqnr_db']} dB{top1}"


def main():
    from hub_families import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="families to run (default: all)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    results = []
    for name in args.only or list(FAMILIES):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                              timeout=3600)
        if proc.returncode != 0:
            results.append({"family": name, "crashed": proc.stderr.strip().splitlines()[-1][:300]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        results[-1]["total_seconds"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {results[-1]}", file=sys.stderr, flush=True)
    print("| family | params | prune 50% -> strip | QAT -> int8 TFLite | post-training int8 | QAT -> QDQ ONNX | s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "crashed" in r:
            print(f"| {r['family']} | | crashed: {r['crashed']} | | | | {r['total_seconds']} |")
            continue
        print(f"| {r['family']} | {r['parameters']:,} | {_cell(r['prune'])} | {_cell(r['qat'])} | {_cell(r['ptq'])} | "
              f"{_cell(r['onnx'])} | {r['total_seconds']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
