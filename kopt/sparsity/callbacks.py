"""Callbacks for pruning: `UpdatePruningStep` (required) and `PruningSummaries` (TensorBoard)."""

import os

import keras
import numpy as np
from keras import ops

from kopt._keras.clone import walk_layers
from kopt.sparsity.wrapper import PruneLowMagnitude


def collect_pruned_layers(model):
    """All `PruneLowMagnitude` layers of `model`, including those in nested models."""
    return [layer for layer in walk_layers(model) if isinstance(layer, PruneLowMagnitude)]


class UpdatePruningStep(keras.callbacks.Callback):
    """Drives pruning during `fit`: required whenever a pruned model is trained.

    At the start of training it sets the pruning step of freshly pruned layers
    to 0 (a model loaded from a file keeps its saved step, so training resumes
    where it stopped). The step then advances in each training step, inside the
    compiled train function. At the end of every epoch it writes
    `weight * mask` into the weights, so a model saved then is sparse.

    Example:

    ```python
    pruned.fit(x, y, epochs=2, callbacks=[kopt.sparsity.UpdatePruningStep()])
    ```
    """

    def __init__(self):
        super().__init__()
        self.prunable_layers = []
        self.channel_layers = []

    def on_train_begin(self, logs=None):
        self.prunable_layers = collect_pruned_layers(self.model)
        from kopt.structured.gradual import channel_pruned_layers  # imported here: kopt.structured uses sparsity

        self.channel_layers = channel_pruned_layers(self.model)
        for layer in self.channel_layers:
            layer.attach_step_callback()
        for layer in self.prunable_layers:
            layer.attach_step_callback()
            # Layers of a model that is not built yet get their weights (step -1) in the first step,
            # which counts from 0 all the same (see PruneLowMagnitude.update_masks).
            if layer.built and int(ops.convert_to_numpy(layer.pruning_step)) < 0:
                layer.pruning_step.assign(0)

    def on_train_batch_begin(self, batch, logs=None):
        if self.channel_layers:  # kopt.structured's channel masks: one decision per group, across layers
            from kopt.structured.gradual import update_channel_masks

            update_channel_masks(self.channel_layers)

    def on_epoch_end(self, batch=None, logs=None):
        # `batch` (the epoch index) is tfmot's name: its guides call `on_epoch_end(batch=...)`.
        for layer in self.prunable_layers:
            if layer.built:
                layer.apply_masks()


class PruningSummaries(keras.callbacks.TensorBoard):
    """TensorBoard callback that also logs pruning: sparsity and threshold per pruned weight.

    Scalars are written under `<log_dir>/metrics` with tfmot's tags, at the
    start of every epoch (as tfmot does) and once more at the end of training,
    at the optimizer's step:

    - `<wrapper name>/mask:0/sparsity`: fraction of zeros in the mask;
    - `<wrapper name>/threshold:0/threshold`: the magnitude threshold;
    - `pruning_step` (kopt only): the wrappers' pruning step.

    A wrapper that prunes several weights numbers the later ones `mask_1:0`,
    `threshold_1:0`, ... (tfmot gives them all the same tag). It also works in a
    custom training loop that calls `set_model` and `on_epoch_begin` (tfmot's
    guide). All other arguments are those of `keras.callbacks.TensorBoard`.

    Args:
        log_dir: directory for the event files (a non-empty string or path).
        update_freq: as in `keras.callbacks.TensorBoard` ("epoch" by default).
        **kwargs: passed to `keras.callbacks.TensorBoard`.

    Example:

    ```python
    pruned.fit(x, y, callbacks=[kopt.sparsity.UpdatePruningStep(),
                                kopt.sparsity.PruningSummaries(log_dir="logs")])
    ```
    """

    def __init__(self, log_dir, update_freq="epoch", **kwargs):
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"`log_dir` must be a non-empty string or path, got {log_dir!r}.")
        super().__init__(log_dir=str(log_dir), update_freq=update_freq, **kwargs)
        self._pruning_writer = None

    def _pruning_logs(self):
        logs, step = {}, None
        for layer in collect_pruned_layers(self.model):
            if not layer.built:
                continue
            for i, (mask, threshold) in enumerate(zip(layer.masks, layer.thresholds)):
                suffix = f"_{i}" if i else ""
                logs[f"{layer.name}/mask{suffix}:0/sparsity"] = 1.0 - float(np.mean(ops.convert_to_numpy(mask)))
                logs[f"{layer.name}/threshold{suffix}:0/threshold"] = float(ops.convert_to_numpy(threshold))
            step = int(ops.convert_to_numpy(layer.pruning_step))
        if step is not None:
            logs["pruning_step"] = float(step)
        return logs, step

    def _log_pruning(self):
        import tensorflow as tf  # TensorBoard summaries are written with TensorFlow.

        pruning_logs, pruning_step = self._pruning_logs()
        if not pruning_logs:
            return
        optimizer = getattr(self.model, "optimizer", None)
        step = int(ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None else max(pruning_step, 0)
        if self._pruning_writer is None:
            self._pruning_writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        with self._pruning_writer.as_default():
            for name, value in pruning_logs.items():
                tf.summary.scalar(name, value, step=step)
        self._pruning_writer.flush()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._log_pruning()

    def on_train_end(self, logs=None):
        self._log_pruning()
        super().on_train_end(logs)
        if self._pruning_writer is not None:
            self._pruning_writer.close()
            self._pruning_writer = None
