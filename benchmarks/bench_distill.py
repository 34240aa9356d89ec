"""Knowledge distillation with few labels on digits: teacher, student alone, distilled student, pruned + int8 chain.

Setting: scikit-learn's bundled digits (8x8 images / 16), a stratified held-out test split of 396 images and 1401
training images, of which only 150 (15 per class, drawn per seed) keep their labels; the other 1251 are labelled
`kopt.distill.UNLABELED` (-1), so they count only in the distillation loss.

- teacher: `kopt.demo.build_cnn` (2 Conv2D + 2 Dense) trained on the 150 labels;
- student alone: an MLP (Flatten -> Dense(32, relu) -> Dense(10)) trained on the 150 labels;
- student distilled: `kopt.distill.Distiller(teacher, student)` (Hinton's loss, T=4, student_loss_weight 0.1)
  over all 1401 training images, unlabelled ones labelled UNLABELED;
- pruned + int8: from each student, 75% magnitude pruning (PolynomialDecay 0 -> 0.75 over 70% of the phase's
  steps, masks every 10 steps) -> strip -> QAT -> `to_tflite(quantization="int8")`, accuracy of the .tflite file in
  LiteRT's interpreter; with the Distiller over all images, or alone on the 150 labels (same phases and steps).

The 150 labelled images are repeated 9 times (1350 samples) wherever a model trains on labels alone, so that every
arm takes the same number of optimizer steps per epoch as the distiller over 1401 images.

Each pruned arm also reports the stripped float model and the QAT model in Keras, to show where accuracy goes.

Then the epoch time of `teacher_outputs="cache"` vs `"online"` (the same distillation, fresh students), timed one
epoch at a time, the two modes alternating, medians after one untimed warm-up epoch each; the cache pass runs in
`fit` before the first epoch and is reported apart. Two teachers: `kopt.demo.build_cnn` (157x the student's MACs)
and a 4x wider CNN (2231x), since with the small one the step time is mostly per-step overhead.

    .venv/bin/python benchmarks/bench_distill.py [--seeds 3] [--quick]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kopt  # noqa: E402
from kopt import convert, distill, quantization, sparsity  # noqa: E402
from kopt.experimental.combine import Default8BitPrunePreserveQuantizeScheme  # noqa: E402
from kopt.datasets import load_digits  # noqa: E402
from kopt.demo import build_cnn  # noqa: E402

LABELLED_PER_CLASS = 15
TEST_FRACTION = 0.22  # 396 test / 1401 train images
BATCH = 64
TARGET_SPARSITY = 0.75
TEMPERATURE = 4.0


def split(seed):
    """Train/test split and the labels the training images keep (UNLABELED elsewhere)."""
    (x_train, y_train), (x_test, y_test) = load_digits(test_fraction=TEST_FRACTION, seed=seed)
    rng = np.random.default_rng(seed)
    labelled = np.sort(np.concatenate([rng.choice(np.flatnonzero(y_train == c), LABELLED_PER_CLASS, replace=False)
                                       for c in range(10)]))
    y_mixed = np.full_like(y_train, distill.UNLABELED)
    y_mixed[labelled] = y_train[labelled]
    reps = len(x_train) // len(labelled)
    x_few, y_few = np.tile(x_train[labelled], (reps, 1, 1, 1)), np.tile(y_train[labelled], reps)
    return x_train, y_mixed, x_few, y_few, x_test, y_test


def build_student():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ], name="student_mlp")


def build_wide_teacher():
    """A 4x wider digits CNN, for the timing part if the small teacher does not dominate the step time."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(128, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10),
    ], name="wide_cnn")


def macs(model):
    """Multiply-adds of one forward pass per sample, counting Conv2D and Dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += h * w * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def loss_fn():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def train_alone(model, x, y, epochs, lr, callbacks=()):
    model.compile(keras.optimizers.Adam(lr), loss_fn())
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return model


def train_distilled(teacher, student, x, y, epochs, lr, callbacks=(), teacher_outputs="online"):
    distiller = distill.Distiller(teacher, student, distillation_losses=distill.LogitsDistillation(TEMPERATURE),
                                  teacher_outputs=teacher_outputs)
    # Accuracies are measured on the test images with predict, so no metrics here.
    distiller.compile(keras.optimizers.Adam(lr), loss_fn())
    distiller.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return distiller.student


def accuracy(model, x, y):
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(-1) == y))


def litert_accuracy(content, x, y):
    """Top-1 accuracy of a full-int8 .tflite classifier in LiteRT, quantizing inputs and dequantizing outputs."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(content))
    index = it.get_input_details()[0]["index"]
    it.resize_tensor_input(index, x.shape)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8, (inp["dtype"], out["dtype"])
    scale, zero = inp["quantization"]
    it.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    it.invoke()
    scale, zero = out["quantization"]
    logits = (it.get_tensor(out["index"]).astype(np.float32) - zero) * scale
    return float(np.mean(logits.argmax(-1) == y))


def prune_schedule(epochs, steps_per_epoch):
    end_step = max(10, int(epochs * steps_per_epoch * 0.7) // 10 * 10)
    return sparsity.PolynomialDecay(0.0, TARGET_SPARSITY, begin_step=0, end_step=end_step, frequency=10)


def pruned_int8(student, fit, epochs, steps_per_epoch, x_repr, x_test, y_test):
    """Prune -> strip -> QAT -> int8 file; `fit(model, epochs, lr, callbacks)` trains (alone or distilled)."""
    pruned = sparsity.prune_low_magnitude(student, pruning_schedule=prune_schedule(epochs["prune"], steps_per_epoch))
    pruned = fit(pruned, epochs["prune"], 5e-4, [sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(pruned)
    # PQAT: the pruned zeros stay zero through QAT.
    qat = fit(quantization.quantize_model(stripped, quantize_scheme=Default8BitPrunePreserveQuantizeScheme()),
              epochs["qat"], 1e-4, [])
    tflite = convert.to_tflite(qat, quantization="int8", representative_data=x_repr)
    acc = litert_accuracy(tflite, x_test, y_test)
    assert abs(acc - convert.evaluate(tflite, x_test, y_test)) < 1e-9  # kopt's own evaluation agrees
    return dict(pruned=accuracy(stripped, x_test, y_test), qat=accuracy(qat, x_test, y_test), litert=acc,
                sparsity=float(min(sparsity.get_sparsity(stripped).values())),
                zeros=convert.inspect(tflite).zero_weight_fraction, agreement=tflite.report.top1_agreement)


def run_seed(seed, epochs):
    keras.utils.set_random_seed(seed)
    x_train, y_mixed, x_few, y_few, x_test, y_test = split(seed)
    steps_per_epoch = -(-len(x_train) // BATCH)
    row = {}

    teacher = train_alone(build_cnn(), x_few, y_few, epochs["teacher"], 1e-3)
    row["teacher"] = accuracy(teacher, x_test, y_test)

    init = build_student()  # both students start from the same weights
    alone = train_alone(copy(init), x_few, y_few, epochs["student"], 1e-3)
    row["student alone"] = accuracy(alone, x_test, y_test)
    # All training images; the 1251 without a label carry kopt.distill.UNLABELED.
    distilled = train_distilled(teacher, copy(init), x_train, y_mixed, epochs["student"], 1e-3)
    row["student distilled"] = accuracy(distilled, x_test, y_test)

    def fit_alone(model, n, lr, callbacks):
        return train_alone(model, x_few, y_few, n, lr, callbacks)

    def fit_distilled(model, n, lr, callbacks):
        return train_distilled(teacher, model, x_train, y_mixed, n, lr, callbacks)

    alone_int8 = pruned_int8(alone, fit_alone, epochs, steps_per_epoch, x_train, x_test, y_test)
    distilled_int8 = pruned_int8(distilled, fit_distilled, epochs, steps_per_epoch, x_train, x_test, y_test)
    for stage, label in (("pruned", "pruned, stripped (Keras float)"), ("qat", "pruned+QAT (Keras)"),
                         ("litert", "pruned+int8 .tflite (LiteRT)")):
        for name, result in (("alone", alone_int8), ("distilled", distilled_int8)):
            row[f"{label}, {name}"] = result[stage]
    row["_sparsity"] = (alone_int8["sparsity"], distilled_int8["sparsity"],
                        alone_int8["zeros"], distilled_int8["zeros"])
    row["_agreement"] = (alone_int8["agreement"], distilled_int8["agreement"])
    return row


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds from the call of fit to the start of training, and of the (single) epoch."""

    def __init__(self):
        super().__init__()
        self.called = self.setup = self.epoch = None

    def on_train_begin(self, logs=None):
        self.setup = time.perf_counter() - self.called

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch = time.perf_counter() - self.start


def time_modes(teacher, rounds, seed=0):
    """Median epoch seconds (and fit-to-training setup seconds) of cached vs online distillation, interleaved."""
    keras.utils.set_random_seed(seed)
    x_train, y_mixed, *_ = split(seed)
    init = build_student()
    distillers = {}
    for mode in ("online", "cache"):
        distillers[mode] = distill.Distiller(teacher, copy(init), teacher_outputs=mode)
        distillers[mode].compile(keras.optimizers.Adam(1e-3), loss_fn())
    epochs = {mode: [] for mode in distillers}
    setups = {mode: [] for mode in distillers}
    ratios = []
    for r in range(rounds + 1):  # round 0: untimed warm-up (tracing)
        order = ("online", "cache") if r % 2 == 0 else ("cache", "online")
        for mode in order:
            timer = EpochTimer()
            timer.called = time.perf_counter()
            distillers[mode].fit(x_train, y_mixed, batch_size=BATCH, epochs=1, verbose=0, callbacks=[timer])
            if r:
                epochs[mode].append(timer.epoch)
                setups[mode].append(timer.setup)
        if r:
            ratios.append(epochs["cache"][-1] / epochs["online"][-1])
    median = {mode: statistics.median(v) for mode, v in epochs.items()}
    setup = {mode: statistics.median(v) for mode, v in setups.items()}
    return median, setup, statistics.median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="few epochs and rounds (a smoke test, not figures)")
    parser.add_argument("--rounds", type=int, default=None, help="timed epochs per mode (default 9, quick 2)")
    args = parser.parse_args()
    epochs = (dict(teacher=2, student=2, prune=2, qat=1) if args.quick
              else dict(teacher=30, student=50, prune=20, qat=10))
    rounds = args.rounds or (2 if args.quick else 9)

    started = time.perf_counter()
    rows = [run_seed(seed, epochs) for seed in range(args.seeds)]
    arms = [k for k in rows[0] if not k.startswith("_")]
    x_train, y_mixed, x_few, _, x_test, _ = split(0)
    print(f"\ndigits: {len(x_train)} training images ({int(np.sum(y_mixed >= 0))} labelled, the rest labelled "
          f"kopt.distill.UNLABELED = {distill.UNLABELED}), {len(x_test)} test images; {args.seeds} seeds "
          f"(split, labelled subset and initialization); batch {BATCH}; epochs {epochs} "
          f"(each epoch ~{-(-len(x_train) // BATCH)} steps in every arm); kopt {kopt.__version__}\n")
    print("| arm | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | mean | std | min | max |")
    print("|---|" + "---|" * (args.seeds + 4))
    for arm in arms:
        values = [row[arm] for row in rows]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {arm} | " + " | ".join(f"{v:.4f}" for v in values)
              + f" | {np.mean(values):.4f} | {std:.4f} | {min(values):.4f} | {max(values):.4f} |")
    gains = [row["student distilled"] - row["student alone"] for row in rows]
    int8 = "pruned+int8 .tflite (LiteRT), "
    gains_int8 = [row[int8 + "distilled"] - row[int8 + "alone"] for row in rows]
    print(f"\ndistilled - alone: {np.mean(gains) * 100:+.2f} pt (per seed "
          + ", ".join(f"{g * 100:+.2f}" for g in gains) + f"); pruned+int8: {np.mean(gains_int8) * 100:+.2f} pt "
          "(per seed " + ", ".join(f"{g * 100:+.2f}" for g in gains_int8) + ")")
    print("stripped student sparsity (min over kernels) alone / distilled: "
          + ", ".join(f"{r['_sparsity'][0]:.3f}/{r['_sparsity'][1]:.3f}" for r in rows)
          + "; zero fraction of the int8 files' weights: "
          + ", ".join(f"{r['_sparsity'][2]:.3f}/{r['_sparsity'][3]:.3f}" for r in rows)
          + "; to_tflite decisive top-1 agreement file vs QAT model: "
          + ", ".join(f"{r['_agreement'][0]:.3f}/{r['_agreement'][1]:.3f}" for r in rows))
    print(f"accuracy part: {time.perf_counter() - started:.0f} s")

    student_macs = macs(build_student())
    print(f"\nEpoch time, teacher_outputs='cache' vs 'online' (1401 images, batch {BATCH}, {rounds} timed epochs "
          "per mode after one warm-up each, modes alternating; student MLP "
          f"{student_macs:,} MACs/sample):\n")
    print("| teacher | teacher MACs/sample | teacher / student MACs | online s/epoch | cache s/epoch "
          "| cache / online (median of per-round ratios) | fit() call to epoch start, online s | same, cache s "
          "| cache building s (difference) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for teacher in (build_cnn(), build_wide_teacher()):
        teacher_macs = macs(teacher)
        median, setup, ratio = time_modes(teacher, rounds)
        print(f"| {teacher.name} | {teacher_macs:,} | {teacher_macs / student_macs:.0f}x | {median['online']:.3f} "
              f"| {median['cache']:.3f} | {ratio:.3f} | {setup['online']:.3f} | {setup['cache']:.3f} "
              f"| {setup['cache'] - setup['online']:.3f} |")
    print("\ntarget: cache / online <= 0.6")
    print(f"total: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
