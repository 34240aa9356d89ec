"""`ScheduledWrapper`: what a wrapper that computes its layer with masked weights on a schedule needs.

`kopt.sparsity.PruneLowMagnitude` (weights) and `kopt.structured.ChannelPruneWrapper` (channels) share it: the
schedule and its serialization, and the check that `UpdatePruningStep` drives the masks in training. The call with
substituted weights comes from `ValueWrapper`. Each subclass builds its masks and says what its weights are
(`effective_weights`).
"""

import keras

from kopt._keras.value_wrapper import ValueWrapper


class ScheduledWrapper(ValueWrapper):
    """A `ValueWrapper` whose masks are driven by a schedule and the `UpdatePruningStep` callback.

    Args:
        layer: the wrapped layer.
        pruning_schedule: the schedule (a `kopt.sparsity.PruningSchedule`).
        **kwargs: passed to `keras.layers.Wrapper` (e.g. `name`).
    """

    # What a training call without `UpdatePruningStep` raises; `{name}` is the wrapper's name.
    callback_error = ("'{name}' is being trained without the kopt.sparsity.UpdatePruningStep() callback: pass "
                      "callbacks=[kopt.sparsity.UpdatePruningStep()] to fit.")

    def __init__(self, layer, pruning_schedule, **kwargs):
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.step_callback_attached = False

    def attach_step_callback(self):
        """Called by `UpdatePruningStep.on_train_begin`: training calls may now advance the masks."""
        self.step_callback_attached = True

    def training_step(self):
        """Runs in each training call, before the layer computes (e.g. advances the step and the masks)."""

    def before_call(self, training):
        if training:
            if not self.step_callback_attached:
                raise ValueError(self.callback_error.format(name=self.name))
            self.training_step()

    def get_config(self):
        config = super().get_config()
        config["pruning_schedule"] = keras.saving.serialize_keras_object(self.pruning_schedule)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["pruning_schedule"] = keras.saving.deserialize_keras_object(config["pruning_schedule"])
        return super().from_config(config, custom_objects=custom_objects)
