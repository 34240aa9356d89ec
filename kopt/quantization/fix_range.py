"""`fix_input_output_range` and `remove_input_range` (tfmot's): set or drop a QAT model's input/output ranges."""

import keras

from kopt._keras.clone import copy_layer, is_graph_model, rewrite_model
from kopt._keras.nodes import graph_nodes, producer
from kopt.quantization._rewrap import rewrapped
from kopt.quantization.layers import QuantizeLayer
from kopt.quantization.quantize_config import QuantizeConfig
from kopt.quantization.quantizers import FixedQuantizer, NoQuantizer
from kopt.quantization.wrapper import _PRE_QUANTIZED, QuantizeWrapper, _activation_name


@keras.saving.register_keras_serializable(package="kopt")
class FixedQuantizeConfig(QuantizeConfig):
    """`config` with its output range fixed (tfmot's `FixedQuantizeConfig`, used by `fix_input_output_range`).

    The activation and output quantizers become one `FixedQuantizer`; a
    softmax/sigmoid/tanh activation, which kopt quantizes at its input, keeps
    its input range and gets the fixed one on its output.

    Args:
        config: the layer's `QuantizeConfig`.
        num_bits, init_min, init_max, narrow_range: as `FixedQuantizer`.

    Example:

    ```python
    from kopt.quantization.fix_range import FixedQuantizeConfig
    config = FixedQuantizeConfig(kopt.quantization.Default8BitQuantizeConfig(["kernel"], ["activation"], False),
                                 num_bits=8, init_min=0.0, init_max=1.0, narrow_range=False)
    ```
    """

    def __init__(self, config, num_bits, init_min, init_max, narrow_range):
        self.config = config
        self.fixed_quantizer = FixedQuantizer(num_bits, init_min, init_max, narrow_range)

    def _pre_quantized(self, layer):
        return _activation_name(getattr(layer, "activation", None)) in _PRE_QUANTIZED

    def get_weights_and_quantizers(self, layer):
        return self.config.get_weights_and_quantizers(layer)

    def get_activations_and_quantizers(self, layer):
        pairs = self.config.get_activations_and_quantizers(layer)
        if self._pre_quantized(layer):
            return pairs
        return [(activation, self.fixed_quantizer) for activation, _ in pairs]

    def get_output_quantizers(self, layer):
        outputs = [self.fixed_quantizer for _ in self.config.get_output_quantizers(layer)]
        if not outputs and self._pre_quantized(layer) and self.config.get_activations_and_quantizers(layer):
            outputs = [self.fixed_quantizer]
        return outputs

    def get_internal_quantizers(self, layer):
        return self.config.get_internal_quantizers(layer)

    def prepare(self, layer):
        self.config.prepare(layer)

    def get_config(self):
        return {"config": keras.saving.serialize_keras_object(self.config),
                **{k: v for k, v in self.fixed_quantizer.get_config().items()}}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["config"] = keras.saving.deserialize_keras_object(config["config"])
        return cls(**config)


def _input_and_output_layers(model):
    """`(QuantizeLayers right after a model input, layers that compute a model output)` of the top-level graph."""
    if isinstance(model, keras.Sequential):
        layers = model.layers
        return ([layers[0]] if layers and isinstance(layers[0], QuantizeLayer) else []), layers[-1:]
    inputs = {id(t) for t in keras.tree.flatten(model.inputs)}
    first = [op for op, tensors, _ in graph_nodes(model)
             if isinstance(op, QuantizeLayer) and any(id(t) in inputs for t in tensors)]
    last = [producer(t) for t in keras.tree.flatten(model.outputs)]
    return first, [op for op in last if op is not None]


def _check(model):
    if not isinstance(model, keras.Model) or not is_graph_model(model):
        raise ValueError(
            f"`model` must be a Sequential or Functional QAT model (from quantize_model / quantize_apply), got "
            f"{type(model).__name__}.")
    first, _ = _input_and_output_layers(model)
    if not first:
        raise ValueError(
            f"`model` ('{model.name}') should be already quantized: no QuantizeLayer follows its inputs. Call "
            "kopt.quantization.quantize_model (or quantize_apply) first.")


def fix_input_output_range(model, num_bits=8, input_min=0.0, input_max=1.0, output_min=0.0, output_max=1.0,
                           narrow_range=False):
    """Fixes the input and output ranges of a QAT model (tfmot's `fix_input_output_range`).

    The `QuantizeLayer` after each model input quantizes with
    `[input_min, input_max]`, and each quantized layer that computes a model
    output with `[output_min, output_max]`; training no longer changes them,
    and the int8 file has these input and output scales. Use it when the ranges
    are known (e.g. pixels in [0, 1], probabilities), right after
    `quantize_apply` or after training.

    Differs from tfmot: the result keeps the model's trained weights and other
    ranges (tfmot rebuilds the model from its config, with new weights); an
    output `QuantizeLayer` (after an operation such as `x + y`) is fixed too.

    Args:
        model: a Sequential or Functional QAT model.
        num_bits: bits of the fixed ranges.
        input_min: the lower end of the input range.
        input_max: the upper end of the input range.
        output_min: the lower end of the output range.
        output_max: the upper end of the output range.
        narrow_range: use `[1, 2^bits - 1]` instead of `[0, 2^bits - 1]`.

    Returns:
        A new QAT model, not compiled.

    Raises:
        ValueError: if `model` is not quantized (no `QuantizeLayer` after its inputs).

    Example:

    ```python
    qat = kopt.quantization.quantize_model(model)
    qat = kopt.quantization.fix_input_output_range(qat, input_min=0.0, input_max=1.0, output_min=-4.0, output_max=4.0)
    qat.compile("adam", "mse")
    qat.fit(x, y, epochs=1, verbose=0)
    ```
    """
    _check(model)
    input_quantizer = FixedQuantizer(num_bits, input_min, input_max, narrow_range)
    FixedQuantizer(num_bits, output_min, output_max, narrow_range)  # checks the output range
    first, last = _input_and_output_layers(model)
    first_ids, last_ids = {id(layer) for layer in first}, {id(layer) for layer in last}

    def replace(layer):
        if id(layer) in first_ids:
            return QuantizeLayer(input_quantizer, name=layer.name)
        if id(layer) in last_ids and isinstance(layer, QuantizeWrapper):
            config = FixedQuantizeConfig(layer.quantize_config, num_bits, output_min, output_max, narrow_range)
            fixed = ("activation_", "pre_activation_", "output_")
            return rewrapped(layer, config, keep=lambda name: not name.startswith(fixed))
        if id(layer) in last_ids and isinstance(layer, QuantizeLayer):
            return QuantizeLayer(FixedQuantizer(num_bits, output_min, output_max, narrow_range), name=layer.name)
        return copy_layer(layer)

    return rewrite_model(model, replace)


def remove_input_range(model):
    """Removes the input quantization of a QAT model (tfmot's `remove_input_range`).

    The `QuantizeLayer` after each model input leaves its input as it is
    (`NoQuantizer`). For a model used inside another one whose previous layer
    is quantized already. Converting it to int8 alone then needs
    `representative_data` for the input range.

    Args:
        model: a Sequential or Functional QAT model.

    Returns:
        A new QAT model, not compiled.

    Example:

    ```python
    qat = kopt.quantization.remove_input_range(kopt.quantization.quantize_model(model))
    ```
    """
    _check(model)
    first, _ = _input_and_output_layers(model)
    first_ids = {id(layer) for layer in first}

    def replace(layer):
        if id(layer) in first_ids:
            return QuantizeLayer(NoQuantizer(), name=layer.name)
        return copy_layer(layer)

    return rewrite_model(model, replace)
