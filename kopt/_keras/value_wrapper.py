"""`ValueWrapper`: a wrapper that runs its layer with some of the layer's weights read as computed values.

Pruning (`weight * mask`), channel pruning and clustering (each weight replaced by its centroid) all compute the
wrapped layer on values derived from its weights, without writing them into the layer's variables. This class holds
what they share: the call with substituted values, the layer's shapes and masks passed through, and loading the
wrapped layer (also when its config does not round-trip).
"""

import keras

from kopt._keras.calls import call_with_values, wrapper_kwargs
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
