"""One worker of a 2-process MultiWorkerMirroredStrategy job on 127.0.0.1, run by test_multi_worker.py.

    python multi_worker_job.py OUT_DIR INDEX PORT0,PORT1 [--plain]   # a worker (INDEX 0 or 1)
    python multi_worker_job.py OUT_DIR single                        # the same training on one device

Prunes the digits CNN to 50% (PolynomialDecay, UpdatePruningStep), strips it, fine-tunes it quantization-aware,
distills the stripped CNN into a small MLP (kopt.distill.Distiller), and saves what every replica must agree on (masks, pruning step, QAT ranges, final weights) to OUT_DIR/<name>.npz;
worker 0 (and the single run) also converts the QAT model to int8 TFLite. With --plain the worker uses
tf.distribute.MultiWorkerMirroredStrategy as it is and records whether Keras's fit fails.
"""

import json
import os
import sys

out, who = sys.argv[1], sys.argv[2]
if who != "single":
    ports = sys.argv[3].split(",")
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                          "task": {"type": "worker", "index": int(who)}})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kopt  # noqa: E402
from kopt.datasets import load_digits  # noqa: E402

plain = "--plain" in sys.argv
strategy = tf.distribute.MultiWorkerMirroredStrategy() if plain else kopt.distribute.get_strategy()
keras.utils.set_random_seed(0)
(x, y), (x_test, y_test) = load_digits()
x, y = x[:1024], y[:1024]
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
batch = 64  # global
steps = len(x) // batch

with strategy.scope():
    model = kopt.demo.build_cnn()
    schedule = kopt.sparsity.PolynomialDecay(0.0, 0.5, begin_step=0, end_step=steps * 2, frequency=4)
    pruned = kopt.sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(keras.optimizers.SGD(0.05), loss, metrics=["accuracy"])
if plain:
    try:
        pruned.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                   callbacks=[kopt.sparsity.UpdatePruningStep()])
        result = "fit worked"
    except Exception as e:  # the failure kopt works around
        result = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    with open(os.path.join(out, f"plain{who}.json"), "w") as f:
        json.dump({"result": result}, f)
    sys.exit(0)

pruned.fit(x, y, batch_size=batch, epochs=3, shuffle=False, verbose=0, callbacks=[kopt.sparsity.UpdatePruningStep()])
record = {"pruning_step": [], "mask": []}
for layer in pruned.layers:
    if isinstance(layer, kopt.sparsity.PruneLowMagnitude):
        record["mask"] += [mask.numpy() for mask in layer.masks]
        record["pruning_step"].append(int(layer.pruning_step.numpy()))
stripped = kopt.sparsity.strip_pruning(pruned)
with strategy.scope():
    qat = kopt.quantization.quantize_model(stripped)
    qat.compile(keras.optimizers.SGD(0.01), loss, metrics=["accuracy"])
qat.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
with strategy.scope():  # distillation from the stripped CNN into a small MLP
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    distiller = kopt.distill.Distiller(stripped, student)
    distiller.compile(keras.optimizers.SGD(0.05), loss)
distiller.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
arrays = {f"mask{i}": m for i, m in enumerate(record["mask"])}
arrays.update({f"student{i}": w for i, w in enumerate(student.get_weights())})
arrays.update({f"qat_{w.path.replace('/', '.')}": w.numpy() for w in qat.weights})
arrays.update({f"stripped{i}": w for i, w in enumerate(stripped.get_weights())})
arrays["pruning_step"] = np.array(record["pruning_step"])
arrays["sparsity"] = np.array([np.mean(m == 0) for m in record["mask"]])
arrays["test_accuracy"] = np.array(qat.evaluate(x_test, y_test, verbose=0)[1])
name = "single" if who == "single" else f"worker{who}"
if who in ("0", "single"):
    content = kopt.convert.to_tflite(qat, os.path.join(out, f"{name}.tflite"), validation_data=x_test)
    arrays["file_accuracy"] = np.array(kopt.convert.evaluate(content, x_test, y_test))
np.savez(os.path.join(out, f"{name}.npz"), **arrays)
print(name, "done", kopt.distribute.describe(strategy))
