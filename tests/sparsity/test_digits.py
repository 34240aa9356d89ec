"""End to end on scikit-learn's digits: target sparsity reached at end_step, accuracy kept."""

import keras
import numpy as np
import pytest
from keras import ops

from kopt import sparsity
from kopt.datasets import load_digits
from kopt.demo import build_cnn

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_pruned_cnn_reaches_target_sparsity_and_keeps_accuracy():
    (x_train, y_train), (x_test, y_test) = load_digits()
    model = build_cnn()
    model.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=20, verbose=0)
    dense_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert dense_accuracy > 0.95

    steps_per_epoch = int(np.ceil(len(x_train) / 32))  # 43
    end_step = 8 * steps_per_epoch - 4  # a multiple of the frequency: the last update lands on end_step
    target = 0.8
    schedule = sparsity.PolynomialDecay(0.0, target, begin_step=0, end_step=end_step, frequency=10)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(keras.optimizers.Adam(5e-4), LOSS, metrics=["accuracy"])

    class StopAtEndStep(keras.callbacks.Callback):
        """Records the masks' sparsity right after the training step numbered end_step."""

        def on_train_batch_end(self, batch, logs=None):
            wrappers = sparsity.callbacks.collect_pruned_layers(self.model)
            if int(ops.convert_to_numpy(wrappers[0].pruning_step)) == end_step:
                self.at_end_step = {
                    f"{w.layer.name}/{label}": 1.0 - float(np.mean(ops.convert_to_numpy(m)))
                    for w in wrappers for m, label in zip(w.masks, w.weight_labels)
                }

    probe = StopAtEndStep()
    pruned.fit(x_train, y_train, batch_size=32, epochs=12, verbose=0, callbacks=[sparsity.UpdatePruningStep(), probe])
    assert set(probe.at_end_step) == {"conv2d/kernel", "conv2d_1/kernel", "dense/kernel", "dense_1/kernel"}
    for name, value in probe.at_end_step.items():
        assert value == pytest.approx(target, abs=0.005), name

    final = sparsity.strip_pruning(pruned)
    final.compile(loss=LOSS, metrics=["accuracy"])
    pruned_accuracy = final.evaluate(x_test, y_test, verbose=0)[1]
    for name, value in sparsity.get_sparsity(final).items():
        assert value == pytest.approx(target, abs=0.005), name
    assert pruned_accuracy >= dense_accuracy - 0.02, (dense_accuracy, pruned_accuracy)

