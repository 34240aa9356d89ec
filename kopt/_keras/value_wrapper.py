"""`ValueWrapper`: a wrapper that runs its layer with some of the layer's weights read as computed values.

Pruning (`weight * mask`), channel pruning and clustering (each weight replaced by its centroid) all compute the
wrapped layer on values derived from its weights, without writing them into the layer's variables. This class holds
what they share: the call with substituted values, the layer's shapes and masks passed through, and loading the
wrapped layer (also when its config does not round-trip).
"""

import inspect

import keras

from kopt._keras.calls import call_with_values, wrapper_kwargs
from kopt._keras.clone import build_layer
from kopt._keras.sublayers import deserialize_layer


class ValueWrapper(keras.layers.Wrapper):
    """A `keras.layers.Wrapper` that computes its layer with `effective_weights()`.

    Subclasses create their state in `build` and return `[(variable, value)]` from `effective_weights`;
    `before_call(training)` runs first in each call (e.g. to advance a schedule).

    Args:
        layer: the wrapped layer.
        **kwargs: passed to `keras.layers.Wrapper` (e.g. `name`); the layer's `input_shape=` is carried over.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(layer, **wrapper_kwargs(layer, kwargs))

    def build_wrapped_layer(self, input_shape, done, do):
        """Builds the wrapped layer if it is not built yet.

        Args:
            input_shape: the shape the layer is built for.
            done: in the error message, what happens to the layer (e.g. `"clustered"`).
            do: in the error message, what to do to the model instead (e.g. `"cluster"`).

        Raises:
            ValueError: if the layer is not built and its `build` takes several inputs.
        """
        if self.layer.built:
            return
        build_args = [
            p for p in inspect.signature(self.layer.build).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        if len(build_args) > 1:
            raise ValueError(
                f"Layer '{self.layer.name}' ({self.layer.__class__.__name__}) takes several inputs and must be "
                f"built before it is {done}: call it once on inputs, or {do} the model that contains it.")
        build_layer(self.layer, input_shape)

    def copy(self):
        """A copy of this built wrapper, with its state (`get_weights()`)."""
        new = self.__class__.from_config(self.get_config())
        if not new.layer.built:  # Keras deserialization usually builds it from its build_config already
            new.layer.build_from_config(self.layer.get_build_config())
        new.build()
        new.set_weights(self.get_weights())
        return new

    def effective_weights(self):
        """`[(variable, value)]`: the weights the layer computes with."""
        raise NotImplementedError

    def before_call(self, training):
        """Runs in each call, before the layer computes."""

    def call(self, inputs, *args, training=None, **kwargs):
        if training is not None and not isinstance(training, bool):
            training = bool(training)
        self.before_call(training)
        return call_with_values(self.layer, self.effective_weights(), inputs, *args, training=training, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["layer"] = deserialize_layer(config["layer"], custom_objects=custom_objects)
        return cls(**config)
