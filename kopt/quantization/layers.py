"""Small layers of the quantization graph: the input quantizer and the annotation marker."""

import keras

from kopt._keras.calls import accepted_kwargs, wrapper_kwargs
from kopt._keras.sublayers import deserialize_layer

from kopt.quantization.quantize_config import QuantizeConfig
from kopt.quantization.quantizers import ActivationQuantizer


@keras.saving.register_keras_serializable(package="kopt")
class QuantizeLayer(keras.layers.Layer):
    """Quantizes a float tensor (a model input) with a moving-average range.

    `quantize_apply` puts one after each model input; its range becomes the
    input quantization of the int8 TFLite model.

    Args:
        quantizer: an `ActivationQuantizer` (default settings if None).
        **kwargs: passed to `keras.layers.Layer`.

    Example:

    ```python
    x = kopt.quantization.QuantizeLayer()(keras.Input((8,)))
    ```
    """

    def __init__(self, quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.quantizer = quantizer or ActivationQuantizer()

    def build(self, input_shape=None):
        self._state = self.quantizer.build(self, (), "input")
        self.built = True

    def call(self, inputs, training=None):
        return self.quantizer(inputs, bool(training), self._state)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "quantizer": keras.saving.serialize_keras_object(self.quantizer)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["quantizer"] = keras.saving.deserialize_keras_object(config["quantizer"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="kopt")
class QuantizeAnnotate(keras.layers.Wrapper):
    """Marks a layer for `quantize_apply` (made by `quantize_annotate_layer`); computes like the layer.

    Args:
        layer: the layer to quantize later.
        quantize_config: a `QuantizeConfig`, or None for the default 8-bit scheme.
        **kwargs: passed to `keras.layers.Wrapper`.

    Example:

    ```python
    annotated = kopt.quantization.QuantizeAnnotate(keras.layers.Dense(4))
    ```
    """

    def __init__(self, layer, quantize_config=None, **kwargs):
        if quantize_config is not None and not isinstance(quantize_config, QuantizeConfig):
            raise ValueError(
                f"`quantize_config` must be a kopt.quantization.QuantizeConfig or None, got {quantize_config!r}.")
        kwargs.setdefault("name", f"quant_annotate_{layer.name}")
        super().__init__(layer, **wrapper_kwargs(layer, kwargs))
        self.quantize_config = quantize_config

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.built = True

    def call(self, inputs, *args, **kwargs):
        return self.layer(inputs, *args, **accepted_kwargs(self.layer, kwargs))

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["quantize_config"] = (
            keras.saving.serialize_keras_object(self.quantize_config) if self.quantize_config else None)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if config.get("quantize_config"):
            config["quantize_config"] = keras.saving.deserialize_keras_object(config["quantize_config"])
        config["layer"] = deserialize_layer(config["layer"], custom_objects=custom_objects)
        return cls(**config)
