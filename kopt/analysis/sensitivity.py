"""`sensitivity`: which layers int8 quantization hurts, measured layer by layer."""

import logging
import time

import keras
import numpy as np

from kopt.analysis import _debugger
from kopt.analysis import _switches as switches
from kopt.analysis.report import SensitivityReport, SensitivityRow

logger = logging.getLogger("kopt")

MODES = ("int8",)


def _check(model, data, mode, max_samples, batch_size, debugger):
    from kopt._keras.inputs import reject_string_inputs
    from kopt.convert import samples as data_lib

    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a Keras 3 keras.Model, got {type(model).__module__}.{type(model).__name__}. "
            "Pass the float model (post-training int8) or a QAT model from kopt.quantization.quantize_model.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"`model` ('{model.name}') must be built with known inputs: give it a keras.Input (e.g. "
            "keras.Sequential([keras.Input((8,)), ...]) or a Functional model).")
    reject_string_inputs(model, "model", "analyze")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}. Use mode='int8' (full-integer TFLite).")
    for name, value in (("max_samples", max_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if not isinstance(debugger, bool):
        raise ValueError(f"`debugger` must be True or False, got {debugger!r}.")
    if data is None:
        raise ValueError("`data` is None: pass typical inputs of the model (e.g. 100-500 samples as a numpy array).")
    return data_lib.collect_inputs(data, data_lib.model_inputs(model), "data", max_samples)


def _outputs(function, model, samples, batch_size):
    """Every output of `function` (the model's call) on `samples`, as float64 arrays."""
    from kopt.convert import samples as data_lib
    from kopt.convert.validation import output_keys

    parts = None
    for start in range(0, data_lib.count(samples), batch_size):
        y = function(data_lib.pack_for_call(model, data_lib.take(samples, start, start + batch_size)))
        _, values = output_keys(y)
        parts = parts or [[] for _ in values]
        for part, value in zip(parts, values):
            part.append(keras.ops.convert_to_numpy(value).astype("float64"))
    return [np.concatenate(p) for p in parts]


def _sqnr(references, outputs):
    """The worst output's SQNR (dB)."""
    from kopt.convert.validation import sqnr_db

    return min(sqnr_db(r, o) for r, o in zip(references, outputs))


def _sort_key(row):
    return (row.sqnr_only_db, -row.sqnr_all_but_db, row.layer)


def sensitivity(model, data, *, mode="int8", max_samples=256, batch_size=32, debugger=True):
    """Measures how much int8 quantization of each layer costs the model's outputs.

    For each layer that kopt's QAT quantizes (the layers `kopt.quantization.quantize_model` wraps: Conv, Dense,
    DepthwiseConv, Activation/ReLU, Add, pooling ... layers, and the ranges it puts after plain operations such as
    `x + y`), it measures, on `data`:

    - `sqnr_only_db`: the SQNR of the model's outputs against the float model's with only that layer quantized
      (its weights and its output range; the rest float, model inputs included), and `sqnr_all_but_db` with
      every layer but that one quantized (model inputs included). Lower is worse; with several outputs, the
      worst output counts. Both come from one fake-quantized Keras model (kopt's QAT model of `model`) whose
      quantizers are switched on and off layer by layer, so nothing is converted per layer: 2 runs over `data`
      per layer. The ranges are those of the int8 file: for a float model, the min/max of each tensor of the
      float model on `data`, as TFLite's post-training calibration sets them (the QAT model runs once in
      training mode, float, with dropout off, no weight changes); for a QAT model, the ranges it learned.
      Weights are quantized as TFLite's int8 spec (per channel for convolutions, per tensor for Dense).
      A Conv/Dense whose ReLU TFLite fuses has no output range of its own: its row measures its weights,
      the ReLU's row the shared output range.
    - `output_min`, `output_max`: the range of the layer's output on `data` (float model), and `range_min`,
      `range_max`: the range it is quantized with.
    - `rmse_over_scale`: TFLite's `tf.lite.experimental.QuantizationDebugger` figure for the post-training int8
      file calibrated on `data` (for a QAT model, of the float model it trained, wrappers removed: the debugger
      cannot verify a file whose ranges come from FakeQuant ops): the RMS difference between each int8 op's output and the float op's on the same quantized inputs, divided by the
      output's scale (about 0.29 for rounding alone), mapped to layers by the Keras names that TFLite's tensor
      names carry; the worst op of the layer. None where the debugger gives no figure.

    Logs one line per layer to the "kopt" logger. Cost: one QAT copy of the model, 2 runs over `data` per layer
    and one conversion for the debugger; MobileNetV2 (alpha 0.35, 96x96, 99 rows) on 32 samples took 22 s
    (13 s with `debugger=False`) on 2 CPU cores, and its every-layer SQNR (7.9 dB, random weights) matched
    the real post-training int8 file's (7.8 dB).

    Args:
        model: a built Keras 3 model: a float model (post-training int8 is measured) or a QAT model from
            `kopt.quantization.quantize_model` (its learned ranges are used; it must have been fit).
        data: typical inputs: a numpy array (a list or dict of arrays for several inputs), a `tf.data.Dataset`
            or a generator (of inputs or `(x, y)` pairs). At most `max_samples` are used.
        mode: "int8" (full-integer TFLite).
        max_samples: the most samples used.
        batch_size: samples per model call.
        debugger: run TFLite's QuantizationDebugger for the `rmse_over_scale` column (one conversion).

    Returns:
        A `SensitivityReport`: `.rows` (one `SensitivityRow` per layer, most sensitive first), `print(report)`
        for a table, `.to_dict()` for JSON, `.plot(path)` for a bar chart.

    Raises:
        ValueError: `model` is not a built Keras model, `data` is empty or does not fit the model, `mode` is
            unknown, or a QAT model was never fit (its ranges are placeholders).

    Example:

    ```python
    report = kopt.analysis.sensitivity(model, x)
    print(report)
    worst = report.rows[0].layer
    report.plot("sensitivity.png")
    ```
    """
    import tensorflow as tf

    from kopt._keras.precision import as_float32
    from kopt.convert import samples as data_lib
    from kopt.convert._qat_state import check_calibrated, is_quantization_aware

    started = time.perf_counter()
    samples = _check(model, data, mode, max_samples, batch_size, debugger)
    model = as_float32(model)
    quantization_aware = is_quantization_aware(model)
    if quantization_aware:
        check_calibrated(model)
        qat = model
    else:
        from kopt.quantization import quantize_model

        qat = quantize_model(model)
    work, units = switches.switchable_copy(qat)
    rows_units = [u for u in units if u.is_row]
    if not rows_units:
        raise ValueError(f"`model` ('{model.name}') has no layer that int8 QAT quantizes: nothing to analyze.")
    source = "quantization-aware" if quantization_aware else "post-training"
    logger.info("sensitivity of '%s' (%s int8, %d samples): %d layers", model.name, source,
                data_lib.count(samples), len(rows_units))

    batches = [data_lib.pack_for_call(work, data_lib.take(samples, s, s + batch_size))
               for s in range(0, data_lib.count(samples), batch_size)]
    with switches.recording(units) as output_ranges:
        if quantization_aware:
            switches.set_flags(units, lambda unit: False)
            for batch in batches:
                work(batch, training=False)
        else:
            switches.calibrate(work, units, batches)

    run = tf.function(lambda x: work(x, training=False), reduce_retracing=True)

    def outputs_with(on):
        switches.set_flags(units, on)
        return _outputs(run, work, samples, batch_size)

    if quantization_aware:
        references = outputs_with(lambda unit: False)  # the float model QAT trained
    else:
        references = _outputs(lambda x: model(x, training=False), model, samples, batch_size)
    sqnr_all = _sqnr(references, outputs_with(lambda unit: True))

    op_rows = _debugger.op_statistics(model, samples, quantization_aware) if debugger else []
    rows = []
    for i, unit in enumerate(rows_units):
        only = _sqnr(references, outputs_with(lambda u: u is unit))
        all_but = _sqnr(references, outputs_with(lambda u: u is not unit))
        low, high = output_ranges.get(unit.name, (None, None))
        kept = switches.quantizer_range(unit)
        ops = [op for op in op_rows if unit.name in op["layers"]]
        figures = [op["rmse_over_scale"] for op in ops if op["rmse_over_scale"] is not None]
        row = SensitivityRow(unit.name, unit.layer_class, only, all_but, low, high,
                             kept[0] if kept else None, kept[1] if kept else None,
                             max(figures) if figures else None, [op["op"] for op in ops])
        rows.append(row)
        logger.info("sensitivity %d/%d: %s (%s): only it quantized %.1f dB, all but it %.1f dB", i + 1,
                    len(rows_units), unit.name, unit.layer_class, only, all_but)
    switches.set_flags(units, lambda unit: True)
    rows.sort(key=_sort_key)
    return SensitivityReport(rows, sqnr_all, mode, source, data_lib.count(samples),
                             time.perf_counter() - started)
