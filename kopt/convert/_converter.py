"""TFLite's converter set up for a Keras 3 model: exported as a SavedModel first (the Keras-3-safe path)."""

import contextlib
import tempfile


def representative_dataset(calibration):
    """A generator function over `calibration`: a dict {signature input name: samples} feeds each input by name;
    an array, the only input."""

    def generate():
        if isinstance(calibration, dict):
            for i in range(len(next(iter(calibration.values())))):
                yield {name: samples[i:i + 1] for name, samples in calibration.items()}
        else:
            for sample in calibration:
                yield [sample[None]]

    return generate


@contextlib.contextmanager
def tflite_converter(model, quantization, calibration=None):
    """A `tf.lite.TFLiteConverter` of `model` for `quantization`, valid inside the `with` (its SavedModel export
    is deleted after).

    Args:
        model: a Keras 3 model (for integer modes, with kopt's integer forms already applied).
        quantization: None, "float16", "dynamic", "int8" or "int16x8".
        calibration: for integer modes, samples keyed by signature input name (or one array).
    """
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="kopt-export-") as export_dir:
        if quantization in ("int8", "int16x8"):
            from kopt.quantization.integer_forms import integer_lowering

            lowering = integer_lowering(model)  # LayerNormalization inside custom layers without NEG
        else:
            lowering = contextlib.nullcontext()
        with lowering:
            model.export(export_dir, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(export_dir)
        if quantization is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if quantization == "int16x8":
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if calibration is not None:
            converter.representative_dataset = representative_dataset(calibration)
        yield converter
