"""`auto_mixed_precision`: keep the layers int8 hurts most float, one at a time, until a target is met."""

import logging

import numpy as np

from kopt.analysis.mixed_precision_result import MixedPrecisionResult, MixedPrecisionStep

logger = logging.getLogger("kopt")

BUDGETS = ("size", "latency")


def _split(data):
    """`(x, labels)` from `data`: an `(x, y)` tuple, or inputs alone."""
    if isinstance(data, tuple) and len(data) == 2:
        return data[0], np.asarray(data[1])
    return data, None


def _check(model, max_drop, min_sqnr, budget, max_steps, labels):
    import keras

    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError("`model` must be a built Keras 3 keras.Model with known inputs (the float model).")
    if (max_drop is None) == (min_sqnr is None):
        raise ValueError("Pass exactly one target: max_drop= (the most top-1 accuracy the int8 file may lose "
                         "against the float model, e.g. 0.01, with data=(x, y)) or min_sqnr= (the least output SQNR "
                         "in dB against the float model, e.g. 30).")
    if max_drop is not None and (isinstance(max_drop, bool) or not isinstance(max_drop, (int, float))
                                 or not 0 <= max_drop < 1):
        raise ValueError(f"`max_drop` must be a fraction in [0, 1) (0.01 = one point of accuracy), got {max_drop!r}.")
    if max_drop is not None and labels is None:
        raise ValueError("`max_drop` compares accuracies, so it needs labels: pass data=(x, y). Or use min_sqnr=.")
    if min_sqnr is not None and (isinstance(min_sqnr, bool) or not isinstance(min_sqnr, (int, float))):
        raise ValueError(f"`min_sqnr` must be a number of dB (e.g. 30), got {min_sqnr!r}.")
    if budget not in BUDGETS:
        raise ValueError(f"`budget` must be one of {BUDGETS}, got {budget!r}: the cost to keep low.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps!r}.")


def _costs(model, budget):
    """Each layer's cost of staying float, by name: its weight count (size) or, for latency, its weight count
    times its output positions (the multiply-adds of a convolution or a Dense over a sequence)."""
    from kopt._keras.clone import walk_layers

    costs = {}
    for layer in walk_layers(model):
        weights = sum(int(np.prod(w.shape)) for w in layer.weights) or 1
        positions = 1
        if budget == "latency":
            try:
                shape = layer.output.shape
                positions = int(np.prod([d or 1 for d in shape[1:-1]])) if len(shape) > 2 else 1
            except (AttributeError, ValueError):  # a layer called more than once, or inside a custom layer
                positions = 1
        costs[layer.name] = weights * positions
    return costs


def _measure(content, keys, samples, inputs, references, labels):
    """The file's worst output SQNR against `references`, and its top-1 accuracy on `labels` (or None)."""
    from kopt.convert import _litert as litert
    from kopt.convert.validation import sqnr_db

    got = litert.run_signature(content, {spec.name: s for spec, s in zip(inputs, samples)})
    sqnr = min(sqnr_db(r, got[key]) for key, r in zip(keys, references))
    accuracy = None
    if labels is not None:
        predicted = np.asarray(got[keys[0]]).reshape(len(labels), -1).argmax(-1)
        truth = labels.argmax(-1) if labels.ndim > 1 else labels
        accuracy = float(np.mean(predicted == truth.astype(predicted.dtype)))
    return sqnr, accuracy


def auto_mixed_precision(model, data, *, max_drop=None, min_sqnr=None, budget="size", path=None, max_steps=16,
                         max_samples=256):
    """Converts `model` to int8 TFLite, keeping its most int8-sensitive layers float until a target is met.

    1. `kopt.analysis.sensitivity` ranks the layers: how much the output SQNR rises when only that layer is left
       float (`sqnr_all_but_db` over the all-int8 figure), divided by the layer's cost of staying float under
       `budget` (its weights for "size"; its weights times output positions, i.e. multiply-adds, for "latency").
    2. One calibration of the model (TFLite's selective quantization, as `to_tflite(keep_float=...)`); then
       files with the first 1, 2, 4, 8 ... ranked layers float, each run in LiteRT on held samples, until one
       meets the target, and bisection down to the fewest layers that do (a layer at a time is not enough
       where the error is spread over many layers, as in EfficientNetV2). At most `max_steps` files after the
       all-int8 one; if none meets the target, the best one measured is kept.
    3. The chosen set is converted with `kopt.convert.to_tflite(..., keep_float=...)`, validated against the
       model, and written to `path`.

    Every file's size is recorded, and every file is timed in alternation in one run (1 thread), so the
    table shows what each kept layer costs.

    Args:
        model: a float Keras 3 model (for a QAT model, see `kopt.quantization.quantize_model(float_layers=...)`).
        data: typical inputs (an array, a list or dict of arrays for several inputs), or an `(x, y)` tuple with
            labels (needed for `max_drop`). The first `max_samples` calibrate and rank; the rest (or, if there
            are no more, the same) measure each file.
        max_drop: the most top-1 accuracy the file may lose against the float model on the held samples
            (0.01 = one point).
        min_sqnr: or: the least output SQNR (dB) of the file against the float model.
        budget: "size" or "latency": the cost kept low when choosing which layers to keep float.
        path: where to write the chosen .tflite file (None: not written).
        max_steps: the most files tried after the all-int8 one.
        max_samples: samples for calibration and ranking.

    Returns:
        A `MixedPrecisionResult`: `.file`, `.kept_float`, `.steps`, `.met`, `print(result)` for the table,
        `.plot(path)`.

    Raises:
        ValueError: bad arguments, no target or two, `max_drop` without labels, or a QAT model.

    Example:

    ```python
    result = kopt.analysis.auto_mixed_precision(model, (x, y), max_drop=0.01, max_steps=2)
    print(result)
    result.plot("mixed_precision.png")
    ```
    """
    from kopt._keras.precision import as_float32
    from kopt.analysis.sensitivity import sensitivity
    from kopt.convert import samples as data_lib
    from kopt.convert import mixed_precision
    from kopt.convert._qat_state import is_quantization_aware
    from kopt.convert._selective import SelectiveQuantizer
    from kopt.convert.tflite import to_tflite
    from kopt.convert.validation import predict_outputs
    from kopt.quantization import with_integer_forms

    x, labels = _split(data)
    _check(model, max_drop, min_sqnr, budget, max_steps, labels)
    if is_quantization_aware(model):
        raise ValueError(f"`model` ('{model.name}') is a QAT model: its int8 ranges are learned, so which layers "
                         "stay float is chosen before training. Run auto_mixed_precision on the float model, then "
                         "quantize it with quantize_model(model, float_layers=result.kept_float).")
    model = as_float32(model)
    inputs = data_lib.model_inputs(model)
    samples = data_lib.collect_inputs(x, inputs, "data", 2 * max_samples)
    total = data_lib.count(samples)
    if labels is not None and len(labels) < total:
        raise ValueError(f"`data`: {len(labels)} labels for {total} samples; give one label per sample.")
    calibration = data_lib.take(samples, 0, max_samples)
    held = data_lib.take(samples, max_samples) if total > max_samples else calibration
    held_labels = None
    if labels is not None:
        held_labels = labels[max_samples:total] if total > max_samples else labels[:total]

    report = sensitivity(model, calibration, max_samples=max_samples, debugger=False)
    costs = _costs(model, budget)
    keys, _, references = predict_outputs(model, held)
    float_accuracy = None
    if held_labels is not None:
        predicted = references[0].reshape(len(held_labels), -1).argmax(-1)
        truth = held_labels.argmax(-1) if held_labels.ndim > 1 else held_labels
        float_accuracy = float(np.mean(predicted == truth.astype(predicted.dtype)))

    def met(sqnr, accuracy):
        if min_sqnr is not None:
            return sqnr >= min_sqnr
        return float_accuracy - accuracy <= max_drop + 1e-12

    target = f"sqnr_db >= {min_sqnr}" if min_sqnr is not None else f"accuracy drop <= {max_drop}"
    steps, files = {}, {}
    with SelectiveQuantizer(with_integer_forms(model), calibration) as quantizer:
        ranked = [name for name in report.keep_float_candidates(costs) if name in quantizer.layers]

        def evaluate(count):
            """The file with the first `count` ranked layers float, measured (once per count)."""
            if count not in steps:
                content = quantizer.quantize(ranked[:count])
                sqnr, accuracy = _measure(content, keys, held, inputs, references, held_labels)
                steps[count] = MixedPrecisionStep(ranked[:count], ranked[count - 1] if count else None,
                                                  met(sqnr, accuracy), sqnr, accuracy, len(content))
                files[count] = content
                logger.info("mixed precision file %d: %d layer(s) float%s: %.1f dB%s%s", len(steps), count,
                            f" (last: {ranked[count - 1]})" if count else "", sqnr,
                            "" if accuracy is None else f", accuracy {accuracy:.4f}",
                            ", target met" if steps[count].met else "")
            return steps[count].met

        # The fewest of the ranked layers that meets the target: 0, 1, 2, 4 ... layers float until a file meets it,
        # then bisection between the last count that did not and the first that did.
        failing, passing = 0, None
        if not evaluate(0):
            count = 1
            while count <= len(ranked) and len(steps) <= max_steps:
                if evaluate(count):
                    passing = count
                    break
                failing = count
                count = len(ranked) if count < len(ranked) < 2 * count else 2 * count
            while passing is not None and passing - failing > 1 and len(steps) <= max_steps:
                middle = (failing + passing) // 2
                if evaluate(middle):
                    passing = middle
                else:
                    failing = middle
        else:
            passing = 0
        if passing is None:  # not met: the best file measured (fewer layers float on a tie)
            score = (lambda c: (steps[c].accuracy, steps[c].sqnr_db)) if held_labels is not None else (
                lambda c: (steps[c].sqnr_db,))
            passing = max(sorted(steps), key=score)
        order = sorted(steps, key=lambda c: list(steps).index(c))  # in the order measured
        shapes = {spec.name: tuple(s.shape[1:]) for spec, s in zip(inputs, held)}
        for count, latency in zip(order, mixed_precision.interleaved_latency([files[c] for c in order], shapes)):
            steps[count].latency_ms = latency
    chosen = steps[passing]
    if not chosen.met:
        logger.warning("auto_mixed_precision: %s is not met after %d files (of %d candidate layers); the best file "
                       "keeps %d float. Raise max_steps or loosen the target", target, len(steps), len(ranked),
                       len(chosen.kept_float))
    kept = [name for name in quantizer.layers if name in chosen.kept_float]
    file = to_tflite(model, path, representative_data=calibration, validation_data=held, keep_float=kept or None,
                     on_mismatch="warn")
    return MixedPrecisionResult(file, kept, [steps[c] for c in order], target, chosen.met, float_accuracy, budget)
