"""Coverage of `keras.applications` by `kopt.convert.to_onnx`: float and QAT (QDQ) files checked in onnxruntime.

For the smallest member of each family (`benchmarks/coverage.py`'s models: `weights=None`, small inputs, a few
training steps), this exports the float model and, with `--qat`, its QAT model (`quantize_model`, one epoch learning
the float outputs, as coverage.py does) and compares each ONNX file with its Keras model in onnxruntime on the same
32 images: SQNR, max |error|, decisive top-1 agreement, and whether the default thresholds of `to_onnx` pass. Each
family runs in its own process (the big QAT fits take 8-11 GB).

    .venv/bin/python benchmarks/onnx_coverage.py [--qat] [--only MobileNetV2,ResNet50]
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LOOSE = {"min_sqnr_db": -1e9, "min_top1_agreement": 0.0}  # measure, never refuse


def _measure(label, model, x):
    from kopt import convert

    start = time.perf_counter()
    try:
        onnx_model = convert.to_onnx(model, validation_data=x, **LOOSE)
    except Exception as error:  # noqa: BLE001 - a family that does not export is a result too
        return {"label": label, "error": f"{type(error).__name__}: {str(error)[:300]}"}
    report = onnx_model.report
    return {"label": label, "seconds": round(time.perf_counter() - start, 1), "sqnr_db": round(report.sqnr_db, 1),
            "max_abs_error": report.max_abs_error, "top1": report.top1_agreement,
            "passes_default": all(o.passes(*report.defaults) for o in report.outputs),
            "kb": len(onnx_model) // 1024}


def one(name, qat):
    import keras

    import coverage
    from kopt import quantization

    model, x = coverage.build(name)
    results = [_measure(f"{name} float", model, x)]
    if qat:
        q = quantization.quantize_model(model)
        q.compile(keras.optimizers.Adam(1e-6), "mse", run_eagerly=True)
        q.fit(x, model.predict(x, verbose=0), batch_size=16, epochs=1, verbose=0)
        results.append(_measure(f"{name} QAT", q, x))
    for result in results:
        print("RESULT " + json.dumps(result), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qat", action="store_true", help="also export each family's QAT model")
    parser.add_argument("--only", help="comma-separated family names (default: all of coverage.SPECS)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single family, in this process
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.one:
        one(args.one, args.qat)
        return
    import coverage

    names = args.only.split(",") if args.only else list(coverage.SPECS)
    print("| model | SQNR (dB) | max abs error | top-1 | default thresholds |")
    print("|---|---|---|---|---|")
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name] + (["--qat"] if args.qat else []),
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            print(f"| {name} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | |")
        for line in lines:
            r = json.loads(line[len("RESULT "):])
            if "error" in r:
                print(f"| {r['label']} | {r['error']} | | | |")
                continue
            top1 = "n/a" if r["top1"] is None else f"{r['top1']:.1%}"
            print(f"| {r['label']} | {r['sqnr_db']} | {r['max_abs_error']:.2g} | {top1} | "
                  f"{'pass' if r['passes_default'] else 'FAIL'} |", flush=True)


if __name__ == "__main__":
    main()
