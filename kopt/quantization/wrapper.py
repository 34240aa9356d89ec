"""`QuantizeWrapper`: runs a layer with fake-quantized weights and quantizes its activation/output."""

import contextlib

import keras
from keras import ops

from kopt._keras.calls import accepted_kwargs, call_with_values, wrapper_kwargs
from kopt._keras.clone import build_layer
from kopt._keras.distribution import same_on_every_replica
from kopt._keras.sublayers import deserialize_layer, is_keras_layer, relative_path
from kopt.quantization.quantize_config import QuantizeConfig

# Activations TFLite computes with a fixed output range: quantize their input, not their output.
_PRE_QUANTIZED = ("softmax", "sigmoid", "tanh")
# Activations TFLite fuses into the op before them.
_FUSED = ("linear", "relu", "relu6")


def _activation_name(activation):
    return getattr(activation, "__name__", type(activation).__name__)


def _on_logistic_grid(x):
    """`x` in [0, 1] rounded as TFLite's int8 LOGISTIC stores its output: scale 1/256, zero point -128."""
    return keras.quantizers.fake_quant_with_min_max_vars(x, 0.0, 255.0 / 256.0, num_bits=8)


def _apply_activation(activation, x):
    """`activation(x)` as the int8 file computes it.

    TFLite's int8 LOGISTIC has a fixed output grid (steps of 1/256), and it lowers sigmoid as that
    op and swish / SiLU as LOGISTIC then MUL: the sigmoid's output is a tensor of the file, rounded
    to 1/256. Left unrounded here, the QAT model differs from its file by up to 1/512 of that
    sigmoid (times x, for swish) before the next requantization, enough to move values across
    rounding boundaries in every swish layer (a Conv2D with swish: file vs QAT model 43 dB, 7% of
    the outputs a step off; rounded: 61 dB, 0.07%).
    """
    name = _activation_name(activation)
    if name == "sigmoid":
        return _on_logistic_grid(ops.sigmoid(x))
    if name in ("silu", "swish"):
        return x * _on_logistic_grid(ops.sigmoid(x))
    return activation(x)


@keras.saving.register_keras_serializable(package="kopt")
class QuantizeWrapper(keras.layers.Wrapper):
    """Quantization-aware training wrapper for one layer (made by `quantize_apply`).

    Weights are fake-quantized as the `quantize_config` says (and multiplied by a
    0/1 mask when `preserve_sparsity`, so a pruned layer stays pruned); the
    layer's activation is applied by the wrapper and quantized after it
    (ReLU, linear) or before it (softmax, sigmoid, tanh); a sigmoid, also the
    one inside swish, is rounded to the fixed output grid of TFLite's int8
    LOGISTIC op (steps of 1/256); output quantizers apply to the result. All
    ranges are weights of the wrapper.

    The wrapped layer is never modified: while the wrapper calls it, the layer
    computes without its activation (the wrapper applies it between the
    quantizers) and without its activity regularizer (the wrapper applies it to
    its own, quantized output, so it is counted once); outside the call its
    `activation` and `activity_regularizer` are its own. Losses the layer adds
    with `add_loss` are kept, so `model.losses` and the training loss are as
    without the wrapper.

    Args:
        layer: the layer to quantize (it keeps its own activation).
        quantize_config: a `QuantizeConfig`.
        quantize_output: `False` when the next layer is a ReLU that TFLite fuses
            into this one, so this output has no range of its own.
        preserve_sparsity: keep the zeros of the weights at zero.
        **kwargs: passed to `keras.layers.Wrapper`.

    Example:

    ```python
    dense = keras.layers.Dense(4, activation="relu")
    wrapper = kopt.quantization.QuantizeWrapper(
        dense, kopt.quantization.Default8BitQuantizeConfig(["kernel"], ["activation"], False))
    assert dense.activation is keras.activations.relu  # the wrapper applies it; the layer keeps it
    ```
    """

    def __init__(self, layer, quantize_config, quantize_output=True, preserve_sparsity=False, **kwargs):
        if not isinstance(quantize_config, QuantizeConfig):
            raise ValueError(f"`quantize_config` must be a kopt.quantization.QuantizeConfig, got {quantize_config!r}.")
        kwargs.setdefault("name", f"quant_{layer.name}")
        super().__init__(layer, **wrapper_kwargs(layer, kwargs))
        self.quantize_config = quantize_config
        self.quantize_output = bool(quantize_output)
        self.preserve_sparsity = bool(preserve_sparsity)
        activation_quantizers = quantize_config.get_activations_and_quantizers(layer)
        self._activation_quantizer = activation_quantizers[0][1] if activation_quantizers else None
        # The activation the wrapper applies between quantizers (the layer then runs without it).
        self.activation = layer.activation if self._activation_quantizer is not None else None
        # Keras applies a layer's activity regularizer to that layer's output: the wrapper's output
        # is what the next layer sees (after the activation and the quantizer).
        self.activity_regularizer = getattr(layer, "activity_regularizer", None)
        self._own_attributes = {"activation": layer.activation} if self.activation is not None else {}
        if self.activity_regularizer is not None:
            self._own_attributes["activity_regularizer"] = self.activity_regularizer
        self._taken_over_depth = 0

    @contextlib.contextmanager
    def _layer_without_taken_over_attributes(self):
        """Inside: the wrapped layer computes with a linear activation and no activity regularizer."""
        if not self._own_attributes:
            yield
            return
        replacements = {"activation": keras.activations.linear, "activity_regularizer": None}
        # A depth count, so that interleaved calls (replica threads of tf.distribute while tracing)
        # restore the layer's own attributes only when the last one ends.
        self._taken_over_depth += 1
        try:
            for name in self._own_attributes:
                setattr(self.layer, name, replacements[name])
            yield
        finally:
            self._taken_over_depth -= 1
            if not self._taken_over_depth:
                for name, value in self._own_attributes.items():
                    setattr(self.layer, name, value)

    def build(self, input_shape=None):
        if not self.layer.built:
            build_layer(self.layer, input_shape)
        self.quantize_config.prepare(self.layer)
        self._weights_and_quantizers = self.quantize_config.get_weights_and_quantizers(self.layer)
        self._weight_states, self.sparsity_masks = [], []
        for variable, quantizer in self._weights_and_quantizers:
            # Named by the path below the layer: 'kernel', or 'query_kernel' for a sublayer's in a custom layer.
            label = relative_path(self.layer, variable).replace("/", "_")
            self._weight_states.append(quantizer.build(self, variable.shape, label))
            if self.preserve_sparsity:
                self.sparsity_masks.append(self.add_weight(
                    name=f"{label}_sparsity_mask", shape=variable.shape, initializer="ones",
                    trainable=False, aggregation="only_first_replica",
                ))
        self._activation_state = (
            self._activation_quantizer.build(self, (), "activation") if self._activation_quantizer else None
        )
        # TFLite fuses only ReLU/ReLU6 into a Conv/Dense: before any other activation (swish, gelu ...)
        # the layer's own output is a tensor of the int8 file and needs a range too.
        # (An Activation layer's input is already quantized by the layer before it.)
        self._pre_activation_state = None
        if (self._activation_quantizer is not None and not isinstance(self.layer, keras.layers.Activation)
                and _activation_name(self.activation) not in _FUSED + _PRE_QUANTIZED):
            self._pre_activation_state = self._activation_quantizer.build(self, (), "pre_activation")
        # Tensors the layer computes inside its call that the file keeps (IntegerLayerNormalization's mean ...).
        self._internal_quantizers = [
            (name, quantizer, quantizer.build(self, (), f"internal_{name}"))
            for name, quantizer in self.quantize_config.get_internal_quantizers(self.layer)]
        self._output_quantizers = list(self.quantize_config.get_output_quantizers(self.layer))
        # A layer with several outputs (a custom layer returning a tuple) gets a range per float output.
        outputs = self._float_output_count(input_shape) if self._output_quantizers else 1
        self._output_states = [
            [q.build(self, (), f"output_{i}" if j == 0 else f"output_{i}_{j}") for j in range(outputs)]
            for i, q in enumerate(self._output_quantizers)]
        self.built = True

    def effective_weights(self):
        """`[(variable, value)]`: each quantized weight with its mask applied (before fake quantization)."""
        masks = self.sparsity_masks or [None] * len(self._weights_and_quantizers)
        return [(v, v if m is None else v * ops.cast(m, v.dtype)) for (v, _), m in zip(self._weights_and_quantizers, masks)]

    def initialize_ranges(self):
        """Sets weight ranges (and sparsity masks) from the current weights; done by `quantize_apply`."""
        for (variable, quantizer), state in zip(self._weights_and_quantizers, self._weight_states):
            if hasattr(quantizer, "assign_range"):
                quantizer.assign_range(variable, state)
        for (variable, _), mask in zip(self._weights_and_quantizers, self.sparsity_masks):
            mask.assign(ops.cast(ops.not_equal(variable, 0), mask.dtype))

    def call(self, inputs, *args, training=None, **kwargs):
        training = bool(training)
        # Weights are mirrored: their ranges come out the same on every replica with no collective.
        with same_on_every_replica():
            mapping = []
            for (variable, value), (_, quantizer), state in zip(
                    self.effective_weights(), self._weights_and_quantizers, self._weight_states):
                mapping.append((variable, quantizer(value, training, state)))
                if training and hasattr(quantizer, "training_weight"):
                    # The quantizer trains its own copy of the weight (CQAT's centroids): the layer's
                    # variable holds the value it computed with, as tfmot's `inputs.assign(output)`.
                    variable.assign(ops.cast(quantizer.training_weight(state), variable.dtype))
        observed = []
        if self._internal_quantizers:
            kwargs["quantize_internals"] = self._internals_quantizer(training, observed)
        with self._layer_without_taken_over_attributes():
            outputs = call_with_values(self.layer, mapping, inputs, *args, training=training, **kwargs)
        for quantizer, state, tensor in observed:  # outside the layer's StatelessScope, which would drop the update
            quantizer.update_range(tensor, state)

        if self.activation is not None:
            if _activation_name(self.activation) in _PRE_QUANTIZED:
                outputs = _apply_activation(
                    self.activation, self._activation_quantizer(outputs, training, self._activation_state))
            else:
                if self._pre_activation_state is not None:
                    outputs = self._activation_quantizer(outputs, training, self._pre_activation_state)
                outputs = _apply_activation(self.activation, outputs)
                if self.quantize_output:
                    outputs = self._activation_quantizer(outputs, training, self._activation_state)
        if self.quantize_output:
            for quantizer, states in zip(self._output_quantizers, self._output_states):
                outputs = self._quantize_outputs(quantizer, states, outputs, training)
        return outputs

    def _internals_quantizer(self, training, observed):
        """`(name, tensor) -> tensor` for the layer's internal tensors: in training it leaves them as they are and
        appends `(quantizer, state, tensor)` to `observed`, whose ranges the wrapper then records (see
        `InternalRangesQuantizeConfig`); in inference it fake-quantizes them."""
        by_name = {name: (quantizer, state) for name, quantizer, state in self._internal_quantizers}

        def quantize(name, tensor):
            quantizer, state = by_name[name]
            if training:
                observed.append((quantizer, state, ops.cast(tensor, "float32")))
                return tensor
            return quantizer(tensor, False, state)

        return quantize

    def _float_output_count(self, input_shape):
        if input_shape is None or isinstance(self.layer, keras.layers.Activation) or is_keras_layer(self.layer):
            return 1
        try:
            spec = self.layer.compute_output_spec(keras.KerasTensor(input_shape, dtype=self.layer.compute_dtype))
        except Exception:  # several inputs, or a shape it cannot take: one output, as most layers have
            return 1
        return max(1, sum(keras.backend.is_float_dtype(t.dtype) for t in keras.tree.flatten(spec)))

    @staticmethod
    def _quantize_outputs(quantizer, states, outputs, training):
        if keras.ops.is_tensor(outputs) or len(states) == 1 and not isinstance(outputs, (tuple, list, dict)):
            return quantizer(outputs, training, states[0])
        flat, index = keras.tree.flatten(outputs), 0
        quantized = []
        for tensor in flat:
            if keras.backend.is_float_dtype(tensor.dtype) and index < len(states):
                tensor = quantizer(tensor, training, states[index])
                index += 1
            quantized.append(tensor)
        return keras.tree.pack_sequence_as(outputs, quantized)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **accepted_kwargs(self.layer, kwargs))

    def get_config(self):
        config = super().get_config()
        # The layer's activation and activity regularizer are saved with the layer, once.
        config.pop("activity_regularizer", None)
        config.update({
            "quantize_config": keras.saving.serialize_keras_object(self.quantize_config),
            "quantize_output": self.quantize_output,
            "preserve_sparsity": self.preserve_sparsity,
        })
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["quantize_config"] = keras.saving.deserialize_keras_object(
            config["quantize_config"], custom_objects=custom_objects)
        config["layer"] = deserialize_layer(config["layer"], custom_objects=custom_objects)
        # Files written before the wrapper stopped modifying its layer hold the layer with a linear
        # activation and its real activation here: give it back to the (freshly loaded) layer.
        activation = config.pop("activation", None)
        if activation is not None and _activation_name(getattr(config["layer"], "activation", None)) == "linear":
            config["layer"].activation = keras.activations.get(activation)
        return cls(**config)
