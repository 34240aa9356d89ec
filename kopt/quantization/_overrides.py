"""`OverriddenQuantizeConfig`: another config's quantizers with some settings changed (bits, per-axis).

Schemes use it to change every quantizer of the default 8-bit configs at once, also those of
`SublayerQuantizeConfig` and `InternalRangesQuantizeConfig`, without one config class per setting.
"""

import keras

from kopt.quantization.quantize_config import QuantizeConfig


def overridden(quantizer, settings):
    """`quantizer` rebuilt with the `settings` its config has (others ignored), or itself if none apply."""
    if not settings:
        return quantizer
    config = quantizer.get_config()
    changed = {k: v for k, v in settings.items() if k in config and config[k] != v}
    if not changed:
        return quantizer
    return type(quantizer).from_config({**config, **changed})


@keras.saving.register_keras_serializable(package="kopt")
class OverriddenQuantizeConfig(QuantizeConfig):
    """A `QuantizeConfig` whose quantizers are `config`'s with some constructor arguments replaced.

    Args:
        config: the `QuantizeConfig` to change.
        weights: `{argument: value}` for its weight quantizers, e.g. `{"num_bits": 4}`
            or `{"per_axis": False}`.
        activations: `{argument: value}` for its activation, output and internal
            quantizers (and no weight quantizer).

    Example:

    ```python
    from kopt.quantization._overrides import OverriddenQuantizeConfig
    config = OverriddenQuantizeConfig(
        kopt.quantization.Default8BitQuantizeConfig(["kernel"], ["activation"], False), weights={"num_bits": 4})
    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    assert config.get_weights_and_quantizers(dense)[0][1].num_bits == 4
    ```
    """

    def __init__(self, config, weights=None, activations=None):
        if not isinstance(config, QuantizeConfig):
            raise ValueError(f"`config` must be a kopt.quantization.QuantizeConfig, got {config!r}.")
        self.config = config
        self.weights = dict(weights or {})
        self.activations = dict(activations or {})

    def get_weights_and_quantizers(self, layer):
        return [(v, overridden(q, self.weights)) for v, q in self.config.get_weights_and_quantizers(layer)]

    def get_activations_and_quantizers(self, layer):
        return [(a, overridden(q, self.activations)) for a, q in self.config.get_activations_and_quantizers(layer)]

    def get_output_quantizers(self, layer):
        return [overridden(q, self.activations) for q in self.config.get_output_quantizers(layer)]

    def get_internal_quantizers(self, layer):
        return [(n, overridden(q, self.activations)) for n, q in self.config.get_internal_quantizers(layer)]

    def prepare(self, layer):
        self.config.prepare(layer)

    def set_quantize_weights(self, layer, quantize_weights):
        self.config.set_quantize_weights(layer, quantize_weights)

    def set_quantize_activations(self, layer, quantize_activations):
        self.config.set_quantize_activations(layer, quantize_activations)

    def get_config(self):
        return {"config": keras.saving.serialize_keras_object(self.config),
                "weights": dict(self.weights), "activations": dict(self.activations)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = keras.saving.deserialize_keras_object(config["config"])
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__
