"""The `kopt` command line: convert, inspect, benchmark, evaluate and analyze models without writing Python.

Every command prints one readable line on failure (`--verbose` shows the traceback). The exit code follows the
error's type (`kopt.errors`): 0 success, 1 a file that does not match its model (`ValidationError`: nothing is
written), 2 bad arguments or input (`ValueError`, `TypeError`, `ImportError`), 3 an unexpected error, 4 a model
the converter cannot convert as asked (`ConversionError`).
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import traceback
import warnings

_EXAMPLES = {
    "demo": "kopt demo --epochs 5",
    "convert": "kopt convert model.keras -o model_int8.tflite --representative calib.npy",
    "inspect": "kopt inspect model_int8.tflite --json",
    "bench": "kopt bench model_int8.tflite --threads 2 --runs 100",
    "eval": "kopt eval model_int8.tflite --x x_test.npy --y y_test.npy",
    "onnx": "kopt onnx model.keras -o model.onnx --validation x_test.npy",
    "analyze": "kopt analyze model.keras --data x_test.npy --labels y_test.npy --max-drop 0.01",
}
_QUANTIZATION = ("int8", "int16x8", "float16", "dynamic", "none")
_TYPES = ("int8", "uint8", "int16", "float32")


class _UsageError(ValueError):
    """Bad arguments or input: exit code 2."""


# Exit codes by error type, most specific first (ValidationError and ConversionError are ValueErrors too).
_EXIT_VALIDATION, _EXIT_USAGE, _EXIT_UNEXPECTED, _EXIT_CONVERSION = 1, 2, 3, 4


def _say(message):
    print(message, file=sys.stderr, flush=True)


class _Step:
    """Prints `message ...` when a long step starts and `done in N s` when it ends (to stderr)."""

    def __init__(self, message):
        self.message = message

    def __enter__(self):
        self.start = time.perf_counter()
        _say(f"{self.message} ...")
        return self

    def __exit__(self, kind, value, tb):
        if kind is None:
            _say(f"  done in {time.perf_counter() - self.start:.1f} s")
        return False


# ------------------------------------------------------------------------------------------ data


def _integer(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive, _non_negative = _integer(1), _integer(0)


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _input_shape(text):
    """NAME=D1[,D2...] -> (name, (d1, ...))."""
    name, _, dims = text.partition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=D1[,D2...] with positive sizes, e.g. token_ids=128, got "
                                         f"{text!r}")
    return name, shape


def _image_folder(path, model):
    import keras
    import numpy as np

    names = sorted(f for f in os.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif")))
    if not names:
        raise _UsageError(f"{path!r} holds no .npy files and no images (.png, .jpg, .bmp, .gif).")
    shape = tuple(model.inputs[0].shape[1:])
    if len(model.inputs) != 1 or len(shape) != 3 or None in shape:
        raise _UsageError(f"a folder of images needs a model with one fixed-size image input; this model takes "
                          f"{[tuple(i.shape) for i in model.inputs]}. Give a .npy file instead.")
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(shape[-1])
    if mode is None:
        raise _UsageError(f"images cannot fill a model input with {shape[-1]} channels. Give a .npy file instead.")
    images = [keras.utils.img_to_array(keras.utils.load_img(os.path.join(path, n), color_mode=mode,
                                                            target_size=shape[:2])) for n in names]
    return np.stack(images).astype("float32")  # pixel values 0-255: the model's own preprocessing applies


def _load_data(path, option, model=None):
    """Arrays for `option` from a .npy file, a .npz file (one array per input name) or a folder.

    A folder holds .npy files (concatenated in name order) or images (resized to the model's input,
    pixel values 0-255).
    """
    import numpy as np

    if not os.path.exists(path):
        raise _UsageError(f"{option} {path!r}: no such file or folder.")
    if os.path.isdir(path):
        arrays = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
        if arrays:
            return np.concatenate([np.load(os.path.join(path, f)) for f in arrays])
        if model is None:
            raise _UsageError(f"{option} {path!r}: a folder must hold .npy files.")
        return _image_folder(path, model)
    if not path.endswith((".npy", ".npz")):
        raise _UsageError(f"{option} {path!r} is not a NumPy .npy/.npz file (or a folder of them).")
    try:
        if path.endswith(".npz"):
            with np.load(path) as archive:
                return {key: archive[key] for key in archive.files}
        return np.load(path)
    except (OSError, ValueError) as error:
        raise _UsageError(f"{option} {path!r} is not a NumPy .npy/.npz file ({error}).") from None


def _load_model(path):
    """A Keras model from a .keras (or .h5) file, with kopt's layers registered."""
    if not os.path.isfile(path):
        raise _UsageError(f"MODEL {path!r}: no such file.")
    if not path.endswith((".keras", ".h5")):
        raise _UsageError(f"MODEL {path!r}: expected a Keras model file (.keras, or legacy .h5).")
    import keras

    import kopt.clustering  # noqa: F401  (registers kopt's serializable layers and losses)
    import kopt.distill  # noqa: F401
    import kopt.quantization  # noqa: F401
    import kopt.sparsity  # noqa: F401

    with _Step(f"loading {path}"):
        return keras.models.load_model(path, compile=False)


def _check_output(path, suffix, option="-o"):
    folder = os.path.dirname(os.path.abspath(path))
    if not path.endswith(suffix):
        raise _UsageError(f"{option} {path!r}: the output file must end in {suffix}.")
    if not os.path.isdir(folder):
        raise _UsageError(f"{option} {path!r}: the folder {folder!r} does not exist. Create it first.")


def _check_file(path, suffixes, what="FILE"):
    if not os.path.isfile(path):
        raise _UsageError(f"{what} {path!r}: no such file.")
    if not path.endswith(suffixes):
        raise _UsageError(f"{what} {path!r}: expected a {' or '.join(suffixes)} file.")


# ------------------------------------------------------------------------------------------ commands


def _demo(args):
    from kopt import demo

    demo.run(epochs=args.epochs, prune_epochs=args.prune_epochs, qat_epochs=args.qat_epochs,
             target_sparsity=args.sparsity, output_dir=args.output_dir, seed=args.seed)


def _report_written(converted, output):
    """Prints the validation report of a file the converter wrote (it writes only files that passed)."""
    if converted.report is not None:
        print(converted.report)
    print(f"wrote {output} ({len(converted):,} bytes)")


def _convert(args):
    _check_output(args.output, ".tflite")
    model = _load_model(args.model)
    representative = _load_data(args.representative, "--representative", model) if args.representative else None
    validation = _load_data(args.validation, "--validation", model) if args.validation else None
    quantization = None if args.quantization == "none" else args.quantization
    from kopt import convert

    what = f"converting to {args.quantization}" + (" (calibrating)" if representative is not None else "")
    with _Step(what + ", then validating in LiteRT"):
        tflite = convert.to_tflite(
            model, args.output, quantization=quantization, representative_data=representative,
            validation_data=validation, input_type=args.input_type, output_type=args.output_type,
            max_samples=args.max_samples, min_sqnr_db=args.min_sqnr_db, min_top1_agreement=args.min_top1_agreement,
            allow_float_ops=args.allow_float_ops)
    _report_written(tflite, args.output)


def _onnx(args):
    _check_output(args.output, ".onnx")
    model = _load_model(args.model)
    validation = _load_data(args.validation, "--validation", model) if args.validation else None
    from kopt import convert

    with _Step("exporting to ONNX, then validating in onnxruntime"):
        onnx = convert.to_onnx(model, args.output, opset=args.opset, validation_data=validation)
    _report_written(onnx, args.output)


def _as_json(info):
    if hasattr(info, "to_dict"):
        return info.to_dict()
    return dataclasses.asdict(info)


def _inspect(args):
    _check_file(args.file, (".tflite", ".onnx"))
    from kopt import convert

    info = convert.inspect(args.file)
    if args.json:
        print(json.dumps(_as_json(info), indent=2, default=str))
        return
    print(info)
    if args.tensors:
        print(_tensor_table(_as_json(info)["tensors"]))
    if args.weights:
        print(_weight_table(_as_json(info).get("weights") or []))


def _quantization(tensor):
    scales, zeros = tensor.get("scales") or [], tensor.get("zero_points") or []
    if not scales:
        return ""
    if len(scales) == 1:
        return f"scale {scales[0]:.6g}, zero point {zeros[0] if zeros else 0}"
    return f"{len(scales)} channels: scale {min(scales):.3g} to {max(scales):.3g}"


def _weight_table(weights, width=60):
    """A text table of weight tensors: op, shape, distinct values (overall and per channel) and zeros."""
    if not weights:
        return "no weight tensors (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV) in this file"
    rows = [("weight", "op", "shape", "distinct", "per channel", "zeros")]
    for w in weights:
        name = w["name"] if len(w["name"]) <= width else "..." + w["name"][-(width - 3):]
        shape = "(" + ", ".join(str(d) for d in w["shape"]) + ")"
        per_channel = "" if w["unique_per_channel"] is None else f"<= {w['unique_per_channel']}"
        size = 1
        for d in w["shape"]:
            size *= d
        rows.append((name, w["op"], shape, str(w["unique_values"]), per_channel, f"{w['zeros'] / max(size, 1):.1%}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def _tensor_table(tensors, width=60):
    """A text table of tensors: name, dtype, shape, constant or not, and quantization parameters."""
    rows = [("tensor", "dtype", "shape", "kind", "quantization")]
    for t in tensors:
        name = t["name"] if len(t["name"]) <= width else "..." + t["name"][-(width - 3):]
        shape = "(" + ", ".join("?" if d in (None, -1) else str(d) for d in t.get("shape") or ()) + ")"
        rows.append((name, str(t.get("dtype", "")), shape, "constant" if t.get("constant") else "activation",
                     _quantization(t)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def _bench(args):
    _check_file(args.file, (".tflite",))
    from kopt import convert

    with _Step(f"timing {args.runs} runs after {args.warmup} warm-up runs"):
        result = convert.benchmark(args.file, threads=args.threads, runs=args.runs, warmup=args.warmup,
                                   batch_size=args.batch_size, input_shapes=dict(args.input_shape or []))
    line = {"file": args.file, "threads": result.threads, "runs": result.runs, "batch_size": args.batch_size,
            "median_ms": round(result.median_ms, 4), "mean_ms": round(result.mean_ms, 4)}
    line.update(p10_ms=round(result.p10_ms, 4), p90_ms=round(result.p90_ms, 4), stdev_ms=round(result.stdev_ms, 4))
    if args.json:
        print(json.dumps(line))
    else:
        print(f"{args.file}: median {result.median_ms:.3f} ms (p10 {result.p10_ms:.3f}, p90 {result.p90_ms:.3f}, "
              f"stdev {result.stdev_ms:.3f}), mean {result.mean_ms:.3f} ms "
              f"({result.runs} runs, {result.threads} thread(s), batch {args.batch_size})")


def _eval(args):
    _check_file(args.file, (".tflite",))
    x = _load_data(args.x, "--x")
    y = _load_data(args.y, "--y")
    if isinstance(x, dict) or isinstance(y, dict):
        raise _UsageError("--x and --y must be single .npy arrays (a multi-input model is not supported here).")
    if len(x) != len(y):
        raise _UsageError(f"--x has {len(x)} samples but --y has {len(y)}.")
    from kopt import convert

    with _Step(f"evaluating on {len(x)} samples"):
        accuracy = convert.evaluate(args.file, x, y, batch_size=args.batch_size)
    print(json.dumps({"file": args.file, "samples": len(x), "accuracy": accuracy}) if args.json
          else f"{args.file}: accuracy {accuracy:.4f} on {len(x)} samples")


def _check_plot(path):
    if not os.path.splitext(path)[1]:
        raise _UsageError(f"--plot {path!r}: needs an image extension such as .png, .svg or .pdf.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise _UsageError(f"--plot {path!r}: the folder {folder!r} does not exist. Create it first.")


def _check_mixed_precision(args):
    """The mixed-precision options of `kopt analyze`, checked before any slow work: the output path, or None."""
    target = args.max_drop is not None or args.min_sqnr is not None
    if args.max_drop is not None and args.min_sqnr is not None:
        raise _UsageError("--max-drop and --min-sqnr are two targets for the mixed-precision file; give one.")
    if args.max_drop is not None and args.labels is None:
        raise _UsageError("--max-drop compares top-1 accuracies, so it needs --labels Y.npy (one label per --data "
                          "sample). Or use --min-sqnr DB.")
    if not target:
        given = [option for option, value in (("--labels", args.labels), ("--output", args.output),
                                              ("--budget", args.budget), ("--max-steps", args.max_steps))
                 if value is not None]
        if given:
            raise _UsageError(f"{given[0]} is used only for the mixed-precision file: add --max-drop FRACTION or "
                              "--min-sqnr DB.")
        return None
    output = args.output or os.path.splitext(args.model)[0] + "_mixed.tflite"
    _check_output(output, ".tflite", "--output")
    return output


def _load_labels(path, data):
    """The --labels array: one integer class id or one-hot row per --data sample."""
    import numpy as np

    labels = _load_data(path, "--labels")
    if isinstance(labels, dict):
        raise _UsageError(f"--labels {path!r}: expected one .npy array of labels, not a .npz of several.")
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
        raise _UsageError(f"--labels {path!r} must be numeric (integer class ids or one-hot rows), got "
                          f"{labels.dtype}.")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2):
        raise _UsageError(f"--labels {path!r} has shape {labels.shape}: expected (n,) class ids or (n, classes) "
                          "one-hot rows.")
    samples = len(next(iter(data.values()))) if isinstance(data, dict) else len(data)
    if len(labels) != samples:
        raise _UsageError(f"--labels {path!r} has {len(labels)} labels but --data has {samples} samples; give one "
                          "label per sample.")
    return labels


def _analyze(args):
    plot = args.plot or os.path.splitext(args.model)[0] + "_sensitivity.png"
    _check_plot(plot)
    output = _check_mixed_precision(args)
    model = _load_model(args.model)
    data = _load_data(args.data, "--data", model)
    from kopt import analysis
    from kopt.convert import samples as data_lib

    try:  # checked here, so that a shape or dtype error names --data
        samples = data_lib.collect_inputs(data, data_lib.model_inputs(model), f"--data {args.data!r}",
                                          args.max_samples)
    except ValueError as error:
        raise _UsageError(str(error).replace("`", "")) from None
    labels = None if args.labels is None else _load_labels(args.labels, data)
    with _Step(f"measuring int8 sensitivity layer by layer on {data_lib.count(samples)} samples"):
        report = analysis.sensitivity(model, samples[0] if len(samples) == 1 else samples,
                                      max_samples=args.max_samples)
    shown = dataclasses.replace(report, rows=report.rows[:args.top]) if args.top else report
    shown.plot(plot)
    result = steps_plot = None
    if output is not None:
        if not args.json:  # the table first: the search takes longer
            print(shown)
            print(f"wrote {plot}")
        target = f"--max-drop {args.max_drop}" if args.max_drop is not None else f"--min-sqnr {args.min_sqnr}"
        with _Step(f"choosing the layers to keep float ({target}, budget {args.budget or 'size'})"):
            result = analysis.auto_mixed_precision(
                model, data if labels is None else (data, labels), max_drop=args.max_drop, min_sqnr=args.min_sqnr,
                budget=args.budget or "size", path=output, max_steps=args.max_steps or 16,
                max_samples=args.max_samples)
        steps_plot = os.path.splitext(args.plot)[0] + "_mixed_precision" + os.path.splitext(args.plot)[1] \
            if args.plot else os.path.splitext(args.model)[0] + "_mixed_precision.png"
        result.plot(steps_plot)
    if args.json:
        info = {"model": args.model, **shown.to_dict(), "plot": plot}
        if result is not None:
            info["mixed_precision"] = {**result.to_dict(), "path": output, "plot": steps_plot}
        print(json.dumps(info, indent=2, default=str))
        return
    if result is None:
        print(shown)
        print(f"wrote {plot}")
        return
    print(result)
    print(f"wrote {output} ({len(result.file):,} bytes)")
    print(f"wrote {steps_plot}")


# ------------------------------------------------------------------------------------------ parser


def _version():
    from kopt import __version__

    return __version__


def build_parser():
    """The argument parser of `kopt` (every command has `--help` with an example)."""
    parser = argparse.ArgumentParser(
        prog="kopt",
        description="Model optimization for Keras 3: convert, inspect, benchmark, evaluate and analyze models.",
        epilog="Examples:\n" + "\n".join(f"  {e}" for e in _EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kopt {_version()}")
    parser.add_argument("--verbose", action="store_true", help="show progress details and tracebacks")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show progress details and the full traceback on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help_text):
        return commands.add_parser(name, help=help_text, description=help_text, parents=[common],
                                   epilog=f"Example:\n  {_EXAMPLES[name]}",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)

    demo = command("demo", "train, prune, QAT and convert a digits CNN to a validated int8 .tflite, and report")
    demo.add_argument("--epochs", type=int, default=20, help="dense training epochs (default 20)")
    demo.add_argument("--prune-epochs", type=int, default=10, help="pruning epochs (default 10)")
    demo.add_argument("--qat-epochs", type=int, default=5, help="quantization-aware epochs (default 5)")
    demo.add_argument("--sparsity", type=_fraction, default=0.8, help="target sparsity in [0, 1) (default 0.8)")
    demo.add_argument("--output-dir", default="tflite_models", help="where digits_int8.tflite goes")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(run=_demo)

    convert = command("convert", "convert a .keras model to a validated .tflite file")
    convert.add_argument("model", metavar="MODEL", help="a .keras model file (float, pruned-and-stripped, or QAT)")
    convert.add_argument("-o", "--output", required=True, metavar="OUT.tflite", help="the .tflite file to write")
    convert.add_argument("--quantization", choices=_QUANTIZATION, default="int8",
                         help="int8 (full integer, default), int16x8, float16, dynamic or none (float32)")
    convert.add_argument("--representative", metavar="X.npy|DIR",
                         help="calibration inputs: .npy, .npz (one array per input name), or a folder of .npy "
                              "files or images (needed for int8/int16x8 of a float model)")
    convert.add_argument("--validation", metavar="X.npy|DIR", help="inputs to validate the file on (default: "
                         "representative samples not used for calibration, else synthetic)")
    convert.add_argument("--input-type", choices=_TYPES, help="type of the file's inputs (default: the mode's)")
    convert.add_argument("--output-type", choices=_TYPES, help="type of the file's outputs (default: the mode's)")
    convert.add_argument("--allow-float-ops", action="store_true", help="accept float ops left in int8 mode")
    convert.add_argument("--max-samples", type=_positive, default=300, help="most samples used (default 300)")
    convert.add_argument("--min-sqnr-db", type=float, help="SQNR threshold (default by mode)")
    convert.add_argument("--min-top1-agreement", type=float, help="top-1 agreement threshold (default by mode)")
    convert.set_defaults(run=_convert)

    inspect = command("inspect", "list the ops, tensor types, quantization parameters, size and zero weights "
                                 "of a .tflite or .onnx file")
    inspect.add_argument("file", metavar="FILE", help="a .tflite or .onnx file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--tensors", action="store_true",
                         help="also list every tensor: dtype, shape and quantization parameters")
    inspect.add_argument("--weights", action="store_true",
                         help="also list each weight tensor: distinct values (per channel too) and zeros, e.g. to "
                              "check that clustering or pruning survived conversion")
    inspect.set_defaults(run=_inspect)

    bench = command("bench", "median and spread of a .tflite file's latency in LiteRT (XNNPACK CPU)")
    bench.add_argument("file", metavar="FILE", help="a .tflite file")
    bench.add_argument("--threads", type=_positive, default=1, help="interpreter threads (default 1)")
    bench.add_argument("--runs", type=_positive, default=50, help="timed runs (default 50)")
    bench.add_argument("--warmup", type=_non_negative, default=5, help="untimed runs first (default 5)")
    bench.add_argument("--batch-size", type=_positive, default=1, help="batch size (default 1)")
    bench.add_argument("--input-shape", type=_input_shape, action="append", metavar="NAME=D1[,D2...]",
                       help="shape without the batch dimension of an input whose size the file leaves open, e.g. "
                            "--input-shape token_ids=128 (repeat for each such input)")
    bench.add_argument("--json", action="store_true", help="print one JSON line")
    bench.set_defaults(run=_bench)

    evaluate = command("eval", "top-1 accuracy of a classifier .tflite file")
    evaluate.add_argument("file", metavar="FILE", help="a .tflite file")
    evaluate.add_argument("--x", required=True, metavar="X.npy", help="inputs (float; quantized as the file needs)")
    evaluate.add_argument("--y", required=True, metavar="Y.npy", help="integer or one-hot labels")
    evaluate.add_argument("--batch-size", type=_positive, default=256, help="samples per call (default 256)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON line")
    evaluate.set_defaults(run=_eval)

    onnx = command("onnx", "export a .keras model to a .onnx file validated in onnxruntime")
    onnx.add_argument("model", metavar="MODEL", help="a .keras model file (float or QAT)")
    onnx.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the .onnx file to write")
    onnx.add_argument("--opset", type=_positive, help="ONNX opset (default: the exporter's)")
    onnx.add_argument("--validation", metavar="X.npy|DIR", help="inputs to validate on (default: synthetic)")
    onnx.set_defaults(run=_onnx)

    analyze = command("analyze", "which layers int8 quantization hurts: each layer's output SQNR, a table and "
                                 "a bar chart (kopt.analysis.sensitivity); with --max-drop or --min-sqnr, also an "
                                 "int8 file keeping the most hurt layers float (kopt.analysis.auto_mixed_precision)")
    analyze.add_argument("model", metavar="MODEL", help="a .keras model file (float, or QAT after fit)")
    analyze.add_argument("--data", required=True, metavar="X.npy|DIR",
                         help="typical inputs: .npy, .npz (one array per input name), or a folder of .npy files or "
                              "images")
    analyze.add_argument("--max-samples", type=_positive, default=256, help="most samples used (default 256)")
    analyze.add_argument("--plot", metavar="PATH", help="the bar chart to write (default: "
                         "MODEL_sensitivity.png next to the model; .png, .svg or .pdf)")
    analyze.add_argument("--top", type=_positive, metavar="K",
                         help="show only the K most sensitive layers (table, JSON and chart; default all)")
    analyze.add_argument("--json", action="store_true", help="print JSON instead of a table (the mixed-precision "
                         "result under \"mixed_precision\")")
    analyze.add_argument("--max-drop", type=_fraction, metavar="FRACTION",
                         help="also write a mixed-precision int8 file that loses at most FRACTION top-1 accuracy "
                              "against the float model (e.g. 0.01; needs --labels)")
    analyze.add_argument("--min-sqnr", type=float, metavar="DB",
                         help="or: also write a mixed-precision int8 file whose output SQNR against the float model "
                              "is at least DB (e.g. 30)")
    analyze.add_argument("--labels", metavar="Y.npy", help="one label per --data sample: integer class ids or "
                         "one-hot rows (for --max-drop)")
    analyze.add_argument("--budget", choices=("size", "latency"),
                         help="the cost kept low when choosing layers to keep float (default size)")
    analyze.add_argument("--max-steps", type=_positive, metavar="N",
                         help="most files tried after the all-int8 one (default 16)")
    analyze.add_argument("--output", metavar="PATH.tflite", help="the mixed-precision file (default: "
                         "MODEL_mixed.tflite next to the model; its steps chart goes next to the sensitivity chart "
                         "as *_mixed_precision.png)")
    analyze.set_defaults(run=_analyze)
    return parser


def _one_line(error):
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0] + (" (run with --verbose for the details)" if len(lines) > 1 else "")


def main(argv=None):
    """Runs the `kopt` command line and returns its exit code.

    Exit codes, by the error's type: 0 success; 1 the converted file does not match its model
    (`kopt.errors.ValidationError`, nothing written); 2 bad arguments or input; 3 an unexpected error; 4 the
    converter cannot convert the model as asked (`kopt.errors.ConversionError`).

    Args:
        argv: the arguments (default: `sys.argv[1:]`).

    Example:

    ```python
    from kopt import cli
    code = cli.main(["inspect", "missing.tflite"])  # 2, with a one-line error on stderr
    ```
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # Quiet TensorFlow's C++ start-up logs for the command line only (never at import of kopt).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    progress = logging.StreamHandler(sys.stderr)
    progress.setFormatter(logging.Formatter("  %(message)s"))
    logger = logging.getLogger("kopt")
    previous_level, previous_propagate, format_warning = logger.level, logger.propagate, warnings.formatwarning
    logger.addHandler(progress)
    # Printed here only: TensorFlow's absl logging gives the root logger a handler of its own on its first message
    # (while exporting a SavedModel), which would print each line a second time ("INFO:kopt:...").
    logger.propagate = False
    logger.setLevel(logging.INFO)
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    from kopt.errors import ConversionError, ValidationError

    try:
        args.run(args)
    except ValidationError as error:
        print(error.report)
        _say(f"kopt {args.command}: validation failed: {getattr(args, 'output', 'the file')} was not written "
             "(see the report above).")
        return _EXIT_VALIDATION
    except ConversionError as error:
        if args.verbose:
            traceback.print_exc()
        _say(f"kopt {args.command}: cannot convert: {error if args.verbose else _one_line(error)}")
        return _EXIT_CONVERSION
    except (_UsageError, ValueError, TypeError, ImportError) as error:
        if args.verbose:
            traceback.print_exc()
        _say(f"kopt {args.command}: error: {error if args.verbose else _one_line(error)}")
        return _EXIT_USAGE
    except KeyboardInterrupt:
        _say(f"kopt {args.command}: interrupted")
        return 130
    except Exception as error:  # anything else: still one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        _say(f"kopt {args.command}: unexpected {type(error).__name__}: {_one_line(error)}")
        return _EXIT_UNEXPECTED
    finally:
        logger.removeHandler(progress)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
        warnings.formatwarning = format_warning
    return 0


if __name__ == "__main__":
    sys.exit(main())
