"""TFLite's QuantizationDebugger on a Keras model's int8 conversion: per-op rmse/scale, by Keras layer name."""

import logging

logger = logging.getLogger("kopt")


def float_model(qat):
    """The float model a QAT model trained: each `QuantizeWrapper` replaced by the layer it wraps (with its
    effective weights: a pruned kernel's mask applied), each `QuantizeLayer` by an Identity."""
    import keras

    from kopt._keras.clone import copy_layer, copy_with_values, rewrite_model
    from kopt.quantization import QuantizeLayer, QuantizeWrapper

    def unwrap(layer):
        if isinstance(layer, QuantizeWrapper):
            return copy_with_values(layer.layer, layer.effective_weights())
        if isinstance(layer, QuantizeLayer):
            return keras.layers.Identity(name=layer.name)
        return copy_layer(layer)

    return rewrite_model(qat, unwrap)


def op_statistics(model, samples, quantization_aware):
    """Runs `tf.lite.experimental.QuantizationDebugger` on the int8 conversion of `model` over `samples`.

    The conversion is post-training int8 calibrated on `samples`, of `with_integer_forms(model)` as
    `kopt.convert.to_tflite` converts a float model. The debugger cannot verify a QAT model's own file (its ranges
    come from FakeQuant ops, which leave no float op to compare with): for a QAT model it runs on the float model
    that QAT trained (its wrappers removed), so the figures are post-training ones for the QAT-trained weights.

    Args:
        model: a Keras model.
        samples: one array per model input.
        quantization_aware: whether `model` is a QAT model.

    Returns:
        A list of dicts, one per op the debugger verified: `op` (TFLite op name), `tensor` (the output tensor's
        name), `rmse_over_scale`, `scale`, `layers` (Keras layer names the tensor name carries). An empty list
        when the debugger cannot run (logged).
    """
    from kopt.convert._selective import SelectiveQuantizer
    from kopt.quantization import with_integer_forms

    try:
        with SelectiveQuantizer(float_model(model) if quantization_aware else with_integer_forms(model),
                                samples, fully_quantize=False) as quantizer:
            return quantizer.op_statistics()
    except Exception as error:  # the debugger supports fewer models than the converter (custom ops, QAT forms)
        logger.info("sensitivity: TFLite's QuantizationDebugger could not run on '%s' (%s: %s); the report has no "
                    "per-op rmse/scale", model.name, type(error).__name__, str(error).splitlines()[0][:200])
        return []
