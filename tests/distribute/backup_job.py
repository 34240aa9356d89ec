"""One worker of a 2-process pruning job with keras.callbacks.BackupAndRestore, run by test_backup_restore.py.

    python backup_job.py OUT_DIR INDEX PORT0,PORT1 NAME [--crash-after EPOCHS]

Prunes the digits CNN for 4 epochs under kopt.distribute.get_strategy() (2 workers on 127.0.0.1) with
BackupAndRestore in OUT_DIR/backup_NAME_INDEX. With --crash-after K the process dies (exit code 3) right after
epoch K is backed up; run again without it, training resumes there. Saves the pruning steps, masks, weights and the
number of epochs this launch trained to OUT_DIR/NAME INDEX.npz.
"""

import json
import os
import sys

out, index, ports, name = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
crash_after = int(sys.argv[sys.argv.index("--crash-after") + 1]) if "--crash-after" in sys.argv else None
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                      "task": {"type": "worker", "index": index}})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kopt  # noqa: E402
from kopt.datasets import load_digits  # noqa: E402

strategy = kopt.distribute.get_strategy()
keras.utils.set_random_seed(0)
(x, y), _ = load_digits()
x, y = x[:1024], y[:1024]
steps = len(x) // 64


class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if crash_after is not None and epoch + 1 == crash_after:
            os._exit(3)  # killed: no clean-up, no saving beyond what BackupAndRestore did


with strategy.scope():
    pruned = kopt.sparsity.prune_low_magnitude(
        kopt.demo.build_cnn(),
        pruning_schedule=kopt.sparsity.PolynomialDecay(0.0, 0.6, begin_step=0, end_step=steps * 3, frequency=4))
    pruned.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.build((None, 8, 8, 1))
backup = keras.callbacks.BackupAndRestore(os.path.join(out, f"backup_{name}_{index}"))
history = pruned.fit(x, y, batch_size=64, epochs=4, shuffle=False, verbose=0,
                     callbacks=[kopt.sparsity.UpdatePruningStep(), backup, Crash()])
wrappers = [layer for layer in pruned.layers if isinstance(layer, kopt.sparsity.PruneLowMagnitude)]
arrays = {f"mask{i}": m.numpy() for i, m in enumerate(m for w in wrappers for m in w.masks)}
arrays.update({f"weight{i}": w for i, w in enumerate(pruned.get_weights())})
arrays["pruning_step"] = np.array([int(w.pruning_step.numpy()) for w in wrappers])
arrays["epochs_run"] = np.array(len(history.epoch))
np.savez(os.path.join(out, f"{name}{index}.npz"), **arrays)
