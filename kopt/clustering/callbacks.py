"""`ClusteringSummaries`: TensorBoard histograms of the clustering wrappers' variables (tfmot's callback)."""

import os

import keras
from keras import ops

from kopt._keras.clone import walk_layers
from kopt.clustering.wrapper import ClusterWeights


class ClusteringSummaries(keras.callbacks.TensorBoard):
    """TensorBoard callback that also writes histograms of each clustered layer's variables.

    As tfmot's: under `clustering/<variable path>` it writes a histogram of every variable of each `ClusterWeights`
    layer (the centroids, the weights, and with `preserve_sparsity` the masks), plus (kopt only) a scalar
    `clustering/<layer>/<weight>/unique_values`: how many distinct values the clustered weight has. They are written
    at each epoch's end, or every `cluster_update_freq` batches. The event files go to `<log_dir>/clustering`.

    Args:
        log_dir: directory for the event files (a non-empty string or path).
        cluster_update_freq: "epoch" (default), "batch", or an integer number of batches.
        **kwargs: passed to `keras.callbacks.TensorBoard`.

    Example:

    ```python
    clustered.fit(x, y, callbacks=[kopt.clustering.ClusteringSummaries(log_dir="logs")])
    ```
    """

    def __init__(self, log_dir="logs", cluster_update_freq="epoch", **kwargs):
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"`log_dir` must be a non-empty string or path, got {log_dir!r}.")
        if cluster_update_freq == "batch":
            cluster_update_freq = 1
        if cluster_update_freq != "epoch" and (not isinstance(cluster_update_freq, int) or cluster_update_freq < 1):
            raise ValueError(f"`cluster_update_freq` must be 'epoch', 'batch' or a positive integer, got "
                             f"{cluster_update_freq!r}.")
        super().__init__(log_dir=str(log_dir), **kwargs)
        self.cluster_update_freq = cluster_update_freq
        self.continuous_batch = 0
        self._clustering_writer = None

    def _write_clustering(self):
        import numpy as np
        import tensorflow as tf  # TensorBoard summaries are written with TensorFlow.

        layers = [layer for layer in walk_layers(self.model) if isinstance(layer, ClusterWeights) and layer.built]
        if not layers:
            return
        if self._clustering_writer is None:
            self._clustering_writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "clustering"))
        with self._clustering_writer.as_default():
            for layer in layers:
                for variable in layer.variables:
                    tf.summary.histogram(f"clustering/{variable.path}", ops.convert_to_numpy(variable),
                                         step=self.continuous_batch)
                for label, (_, value) in zip(layer.weight_labels, layer.effective_weights()):
                    unique = len(np.unique(ops.convert_to_numpy(value)))
                    tf.summary.scalar(f"clustering/{layer.name}/{label}/unique_values", unique,
                                      step=self.continuous_batch)
        self._clustering_writer.flush()

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        self.continuous_batch += 1

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.cluster_update_freq != "epoch" and self.continuous_batch % self.cluster_update_freq == 0:
            self._write_clustering()

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.cluster_update_freq == "epoch":
            self._write_clustering()

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self._clustering_writer is not None:
            self._clustering_writer.close()
            self._clustering_writer = None
