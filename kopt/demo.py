"""The main job: prune a small CNN on scikit-learn's bundled digits and report what it gained."""

import gzip
import io
import time

import numpy as np


def build_cnn():
    """The small digits CNN used by the demo, tests and benchmarks (8x8x1 -> 10 logits)."""
    import keras

    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ], name="digits_cnn")


def _gzipped_size(model):
    buffer = io.BytesIO()
    for w in model.get_weights():
        buffer.write(np.ascontiguousarray(w).tobytes())
    return len(gzip.compress(buffer.getvalue(), compresslevel=9))


def run(epochs=20, prune_epochs=10, target_sparsity=0.8, seed=0, verbose=1):
    """Trains a dense CNN on digits, prunes it to `target_sparsity`, and returns the figures.

    Args:
        epochs: epochs of dense training.
        prune_epochs: epochs of pruning + fine-tuning.
        target_sparsity: final fraction of zeros in every pruned weight.
        seed: random seed.
        verbose: 1 prints progress and the table, 0 is silent.

    Returns:
        A dict with dense and pruned test accuracy, the per-weight sparsity and
        gzipped weight sizes.

    Example:

    ```python
    from kopt import demo
    report = demo.run(epochs=2, prune_epochs=2, verbose=0)
    ```
    """
    import keras

    from kopt import sparsity
    from kopt.datasets import load_digits

    say = print if verbose else (lambda *a, **k: None)
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = load_digits(seed=seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fit_verbose = 2 if verbose else 0

    say(f"[1/3] training the dense CNN on digits ({len(x_train)} train / {len(x_test)} test images)")
    start = time.perf_counter()
    model = build_cnn()
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=fit_verbose)
    dense_acc = model.evaluate(x_test, y_test, verbose=0)[1]

    say(f"[2/3] pruning to {target_sparsity:.0%} sparsity over {prune_epochs} epochs")
    steps = int(np.ceil(len(x_train) / 32)) * prune_epochs
    schedule = sparsity.PolynomialDecay(0.0, target_sparsity, begin_step=0, end_step=int(steps * 0.7), frequency=10)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=schedule)
    pruned.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    pruned.fit(x_train, y_train, batch_size=32, epochs=prune_epochs, verbose=fit_verbose,
               callbacks=[sparsity.UpdatePruningStep()])

    say("[3/3] stripping the pruning wrappers and measuring")
    final = sparsity.strip_pruning(pruned)
    final.compile(metrics=["accuracy"], loss=loss)
    pruned_acc = final.evaluate(x_test, y_test, verbose=0)[1]
    report = {
        "dense_accuracy": float(dense_acc),
        "pruned_accuracy": float(pruned_acc),
        "sparsity": sparsity.get_sparsity(final),
        "dense_gzip_bytes": _gzipped_size(model),
        "pruned_gzip_bytes": _gzipped_size(final),
        "seconds": time.perf_counter() - start,
    }
    say("")
    say(f"{'':24}{'dense':>12}{'pruned':>12}")
    say(f"{'test accuracy':24}{report['dense_accuracy']:>12.4f}{report['pruned_accuracy']:>12.4f}")
    say(f"{'weights, gzipped (B)':24}{report['dense_gzip_bytes']:>12,}{report['pruned_gzip_bytes']:>12,}")
    for name, value in report["sparsity"].items():
        say(f"{'sparsity ' + name:24}{0.0:>12.2f}{value:>12.2f}")
    say(f"\ndone in {report['seconds']:.0f} s")
    return report
