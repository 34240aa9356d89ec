"""`ScheduledWrapper`: what a wrapper that computes its layer with masked weights on a schedule needs.

`kopt.sparsity.PruneLowMagnitude` (weights) and `kopt.structured.ChannelPruneWrapper` (channels) share it: the
schedule and its serialization, the check that `UpdatePruningStep` drives the masks in training, the call with
substituted weights, and the layer's shapes and masks passed through. Each subclass builds its masks and says
what its weights are (`effective_weights`).
"""

import keras

from kopt._keras.calls import call_with_values, wrapper_kwargs
from kopt._keras.sublayers import deserialize_layer


class ScheduledWrapper(keras.layers.Wrapper):
    """A `keras.layers.Wrapper` computing its layer with `effective_weights()`, its masks driven by a schedule.

    Args:
        layer: the wrapped layer.
        pruning_schedule: the schedule (a `kopt.sparsity.PruningSchedule`).
        **kwargs: passed to `keras.layers.Wrapper` (e.g. `name`).
    """

    # What a training call without `UpdatePruningStep` raises; `{name}` is the wrapper's name.
    callback_error = ("'{name}' is being trained without the kopt.sparsity.UpdatePruningStep() callback: pass "
                      "callbacks=[kopt.sparsity.UpdatePruningStep()] to fit.")

    def __init__(self, layer, pruning_schedule, **kwargs):
        super().__init__(layer, **wrapper_kwargs(layer, kwargs))
        self.pruning_schedule = pruning_schedule
        self.step_callback_attached = False

    def attach_step_callback(self):
        """Called by `UpdatePruningStep.on_train_begin`: training calls may now advance the masks."""
        self.step_callback_attached = True

    def effective_weights(self):
        """`[(variable, value)]`: the weights the layer computes with (masked)."""
        raise NotImplementedError

    def training_step(self):
        """Runs in each training call, before the layer computes (e.g. advances the step and the masks)."""

    def call(self, inputs, *args, training=None, **kwargs):
        if training is not None and not isinstance(training, bool):
            training = bool(training)
        if training:
            if not self.step_callback_attached:
                raise ValueError(self.callback_error.format(name=self.name))
            self.training_step()
        return call_with_values(self.layer, self.effective_weights(), inputs, *args, training=training, **kwargs)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)

    def compute_mask(self, inputs, previous_mask=None):
        return self.layer.compute_mask(inputs, previous_mask)

    def get_config(self):
        config = super().get_config()
        config["pruning_schedule"] = keras.saving.serialize_keras_object(self.pruning_schedule)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(config["pruning_schedule"])
        config["layer"] = deserialize_layer(config["layer"], custom_objects=custom_objects)
        return cls(**config)
