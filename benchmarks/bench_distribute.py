"""Training-step time under MirroredStrategy (2 logical CPUs) vs one device, kopt pruned vs plain Keras, and the
cross-replica reductions per step of kopt's wrappers.

Setting: `kopt.demo.build_cnn` (8x8x1 digits CNN), random digits-shaped data, batch 64 global (32 per replica under
the 2-replica MirroredStrategy over the two logical CPU devices this script makes), SGD. Six models with the same
initial weights: plain Keras, kopt pruned (ConstantSparsity 0.8, masks every 10 steps) and kopt QAT
(`quantize_model`), each on one device and under MirroredStrategy. Each timed fit is one epoch of --steps steps; pairs are timed back to back, alternating the
order, for --rounds rounds (benchmarks/common.py); figures are medians of the per-round ratios.

Reductions: while each mirrored model's train step is traced (once; it then runs every step), calls to the
strategy's cross-replica reduce (`MirroredExtended._reduce_to` / `_batch_reduce_to`) are counted, with the tensors
they carry, and its all-gathers (`_gather_to_implementation`): plain Keras, kopt pruned, kopt QAT.

    .venv/bin/python benchmarks/bench_distribute.py [--rounds 9] [--steps 100]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np
    from tensorflow.python.distribute import mirrored_strategy

    import kopt
    from common import interleaved_pairs, print_tables, time_fit

    counts = {"calls": 0, "tensors": 0, "gathers": 0}
    original = (mirrored_strategy.MirroredExtended._reduce_to, mirrored_strategy.MirroredExtended._batch_reduce_to,
                mirrored_strategy.MirroredExtended._gather_to_implementation)

    def reduce_to(self, reduce_op, value, destinations, options):
        counts["calls"] += 1
        counts["tensors"] += 1
        return original[0](self, reduce_op, value, destinations, options)

    def batch_reduce_to(self, reduce_op, value_destination_pairs, options):
        counts["calls"] += 1
        counts["tensors"] += len(value_destination_pairs)
        return original[1](self, reduce_op, value_destination_pairs, options)

    def gather_to(self, value, destinations, axis, options):
        counts["gathers"] += 1
        return original[2](self, value, destinations, axis, options)

    mirrored_strategy.MirroredExtended._reduce_to = reduce_to
    mirrored_strategy.MirroredExtended._gather_to_implementation = gather_to
    mirrored_strategy.MirroredExtended._batch_reduce_to = batch_reduce_to

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    batch = 64
    x = rng.random((args.steps * batch, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, args.steps * batch)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    initial = kopt.demo.build_cnn().get_weights()
    one = kopt.distribute.get_strategy()
    two = kopt.distribute.get_strategy(devices=["/cpu:0", "/cpu:1"])
    print(kopt.distribute.describe(two))

    def make(kind, strategy):
        with strategy.scope():
            model = kopt.demo.build_cnn()
            model.set_weights(initial)
            if kind == "pruned":
                model = kopt.sparsity.prune_low_magnitude(
                    model, pruning_schedule=kopt.sparsity.ConstantSparsity(0.8, 0, frequency=10))
            elif kind == "qat":
                model = kopt.quantization.quantize_model(model)
            model.compile(keras.optimizers.SGD(0.01), loss)
        return model

    models = {}
    reductions = {}
    for kind in ("Keras 3", "pruned", "qat"):
        for label, strategy in (("1 device", one), ("2 replicas", two)):
            name = f"{'kopt ' + kind if kind != 'Keras 3' else kind}, {label}"
            model = make(kind, strategy)
            counts.update(calls=0, tensors=0, gathers=0)
            callbacks = [kopt.sparsity.UpdatePruningStep()] if kind == "pruned" else []
            model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)
            if label == "2 replicas":
                reductions[name] = dict(counts)
            models[name] = (model, callbacks)

    def measure(name):
        model, callbacks = models[name]
        return time_fit(model, x, y, batch, [type(c)() for c in callbacks])

    pairs = {
        "Keras 3: 2 replicas / 1 device": ("Keras 3, 1 device", "Keras 3, 2 replicas"),
        "kopt pruned: 2 replicas / 1 device": ("kopt pruned, 1 device", "kopt pruned, 2 replicas"),
        "kopt pruned / Keras 3, 1 device": ("Keras 3, 1 device", "kopt pruned, 1 device"),
        "kopt pruned / Keras 3, 2 replicas": ("Keras 3, 2 replicas", "kopt pruned, 2 replicas"),
        "kopt QAT: 2 replicas / 1 device": ("kopt qat, 1 device", "kopt qat, 2 replicas"),
        "kopt QAT / Keras 3, 1 device": ("Keras 3, 1 device", "kopt qat, 1 device"),
        "kopt QAT / Keras 3, 2 replicas": ("Keras 3, 2 replicas", "kopt qat, 2 replicas"),
    }
    medians, ratios = interleaved_pairs(pairs, measure, args.rounds)
    print_tables(f"## Step time, {args.rounds} rounds of {args.steps} steps, batch {batch} global", medians, ratios,
                 "kopt's overhead (kopt / Keras) must not grow from 1 device to 2 replicas")
    print("\n## Cross-replica reductions per training step (2 replicas)\n")
    print("| model | reduce calls per step | tensors reduced per step | all-gathers per step |")
    print("|---|---|---|---|")
    for name, c in reductions.items():
        print(f"| {name} | {c['calls']} | {c['tensors']} | {c['gathers']} |")
    for name, (model, _) in models.items():
        del model
    for restore, attribute in zip(original, ("_reduce_to", "_batch_reduce_to", "_gather_to_implementation")):
        setattr(mirrored_strategy.MirroredExtended, attribute, restore)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
