"""kopt's compression recipe: prune while fine-tuning, strip, fine-tune quantization-aware.

`kopt demo`, the model zoo (`python -m kopt.zoo`) and `kopt.search.CompressionTuner` all compress with it, so the
pruning schedule is computed in one place (`pruning_schedule`). The recipe reuses the trained model's compile
arguments with a fresh optimizer: at half its constant learning rate while pruning, at a tenth during
quantization-aware training (a learning-rate schedule is kept as it is). The result is a Keras model ready for
`kopt.convert.to_tflite`.
"""

import math

import keras
import numpy as np

PRUNE_LEARNING_RATE_FACTOR = 0.5
CLUSTER_LEARNING_RATE_FACTOR = 0.1
QAT_LEARNING_RATE_FACTOR = 0.1
RAMP_FRACTION = 0.7  # sparsity reaches its target after this fraction of the pruning steps


def steps_per_epoch(x, batch_size=None):
    """Training steps in one epoch over `x`, as `model.fit` counts them, or None when unknown.

    Args:
        x: the training inputs: an array, a list/dict of arrays, or a finite `tf.data.Dataset` of batches.
        batch_size: the batch size of arrays (default 32, as `model.fit`).

    Returns:
        An int, or None for a dataset of unknown or infinite cardinality.

    Example:

    ```python
    import numpy as np
    from kopt import recipe
    assert recipe.steps_per_epoch(np.zeros((1347, 8)), batch_size=32) == 43
    ```
    """
    if hasattr(x, "cardinality"):
        steps = int(x.cardinality())
        return steps if steps > 0 else None
    first = x[0] if isinstance(x, (list, tuple)) else (next(iter(x.values())) if isinstance(x, dict) else x)
    return math.ceil(len(first) / (batch_size or 32))


def pruning_schedule(sparsity, steps_per_epoch, epochs):
    """The recipe's pruning schedule: a polynomial ramp to `sparsity` over the first 70% of the pruning steps.

    The mask is updated every `frequency` steps: a tenth of the ramp, between 1 and 100 steps (tfmot's default
    frequency), so short fine-tunings still prune gradually; the ramp ends on a mask update, so the last update
    reaches `sparsity` within the fine-tuning. For example 1347 samples in batches of 32 (43 steps per epoch) over
    10 epochs: `PolynomialDecay(0, sparsity, begin_step=0, end_step=300, frequency=30)`.

    Args:
        sparsity: the final fraction of zeros, in (0, 1).
        steps_per_epoch: training steps per epoch (see `steps_per_epoch`), or None when unknown: then the
            schedule is `ConstantSparsity(sparsity, 0, frequency=10)`.
        epochs: epochs of pruning fine-tuning.

    Returns:
        A `kopt.sparsity.PolynomialDecay` (or `ConstantSparsity`).

    Example:

    ```python
    from kopt import recipe
    schedule = recipe.pruning_schedule(0.8, steps_per_epoch=43, epochs=10)
    assert (schedule.end_step, schedule.frequency) == (300, 30)
    ```
    """
    from kopt import sparsity as kopt_sparsity

    if steps_per_epoch is None:
        return kopt_sparsity.ConstantSparsity(sparsity, begin_step=0, frequency=10)
    end_step = max(1, int(steps_per_epoch * epochs * RAMP_FRACTION))
    frequency = max(1, min(100, end_step // 10))
    end_step = max(frequency, end_step // frequency * frequency)  # a mask update falls on the last step
    return kopt_sparsity.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end_step, frequency=frequency)


def recompile_like(model, reference, learning_rate_factor=1.0, learning_rate=None):
    """Compiles `model` with `reference`'s compile arguments and a fresh optimizer of the same config.

    Args:
        model: the model to compile.
        reference: a compiled model whose loss, metrics and optimizer config are reused.
        learning_rate_factor: multiplies a constant learning rate (a `LearningRateSchedule` is kept as it is).
        learning_rate: if given, the learning rate instead (the factor is then ignored).

    Returns:
        `model`, compiled.
    """
    _check_compiled(reference)
    model.compile_from_config(reference.get_compile_config())
    if learning_rate is not None:
        model.optimizer.learning_rate = float(learning_rate)
    elif learning_rate_factor != 1.0:
        try:
            rate = float(model.optimizer.learning_rate)
        except TypeError:  # the optimizer follows a LearningRateSchedule, which cannot be set
            return model
        # The rate as written (the shortest decimal of its float32 value: 0.001, not 0.0010000000474974513) times
        # the factor, so 1e-3 * 0.1 gives the optimizer exactly what `Adam(1e-4)` would.
        model.optimizer.learning_rate = float(str(np.float32(rate))) * learning_rate_factor
    return model


def _check_compiled(model):
    if not getattr(model, "compiled", False):
        raise ValueError(f"The model '{model.name}' is not compiled: the recipe fine-tunes with its compile "
                         "arguments (loss, metrics, optimizer). Call `model.compile(optimizer, loss, metrics)` "
                         "first.")


def _check_epochs(epochs, name):
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {epochs!r}.")


def prune(model, x, y=None, *, sparsity, epochs, batch_size=None, reference=None, learning_rate=None, seed=None,
          verbose=0, **fit_kwargs):
    """Prunes `model` to `sparsity` while fine-tuning it, then strips the pruning wrappers (the recipe's first half).

    Args:
        model: a trained Keras model.
        x: training inputs, as for `model.fit`.
        y: training labels (None when `x` is a dataset of `(x, y)` batches).
        sparsity: final fraction of zeros in every prunable weight, in (0, 1).
        epochs: epochs of fine-tuning while pruning.
        batch_size: as for `model.fit`; with `x`'s size and `epochs` it sets the schedule (`pruning_schedule`).
        reference: the compiled model whose compile arguments are reused (default: `model`).
        learning_rate: the fine-tuning learning rate (default: half the reference's constant one).
        seed: if not None, `keras.utils.set_random_seed(seed)` first.
        verbose: as for `model.fit`.
        **fit_kwargs: passed to `model.fit` (`steps_per_epoch` also sets the schedule).

    Returns:
        The stripped model (plain Keras layers, the zeros in their weights), compiled like `reference`.

    Example:

    ```python
    import keras
    import numpy as np
    from kopt import recipe
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = np.random.rand(64, 8).astype("float32"), np.arange(64) % 3
    stripped = recipe.prune(model, x, y, sparsity=0.5, epochs=2, batch_size=16)
    ```
    """
    from kopt import sparsity as kopt_sparsity

    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0 < sparsity < 1:
        raise ValueError(f"`sparsity` must be a fraction in (0, 1), e.g. 0.8, got {sparsity!r}.")
    _check_epochs(epochs, "epochs")
    reference = model if reference is None else reference
    steps = fit_kwargs.get("steps_per_epoch") or steps_per_epoch(x, batch_size)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    pruned = kopt_sparsity.prune_low_magnitude(model, pruning_schedule=pruning_schedule(sparsity, steps, epochs))
    recompile_like(pruned, reference, PRUNE_LEARNING_RATE_FACTOR, learning_rate)
    callbacks = list(fit_kwargs.pop("callbacks", None) or []) + [kopt_sparsity.UpdatePruningStep()]
    pruned.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks, **fit_kwargs)
    return recompile_like(kopt_sparsity.strip_pruning(pruned), reference)


def cluster(model, x, y=None, *, clusters, epochs, preserve_sparsity=False, batch_size=None, reference=None,
            learning_rate=None, seed=None, verbose=0, **fit_kwargs):
    """Clusters `model`'s kernels (k-means++) while fine-tuning it, then strips the clustering wrappers.

    Args:
        model: a trained (or pruned and stripped) Keras model.
        x: training inputs, as for `model.fit`.
        y: training labels (None when `x` is a dataset of `(x, y)` batches).
        clusters: distinct values per kernel (`kopt.clustering.cluster_weights`'s `number_of_clusters`).
        epochs: epochs of fine-tuning while clustered.
        preserve_sparsity: keep a pruned model's zeros (one centroid stays 0; `clusters` >= 3).
        batch_size: as for `model.fit`.
        reference: the compiled model whose compile arguments are reused (default: `model`).
        learning_rate: the fine-tuning learning rate (default: a tenth of the reference's constant one).
        seed: if not None, `keras.utils.set_random_seed(seed)` first.
        verbose: as for `model.fit`.
        **fit_kwargs: passed to `model.fit`.

    Returns:
        The stripped model (plain Keras layers, at most `clusters` distinct values per kernel), compiled like
        `reference`. Fine-tune it with `quantize_aware(..., scheme=Default8BitClusterPreserveQuantizeScheme())` to keep
        the clusters through QAT.

    Example:

    ```python
    import keras
    import numpy as np
    from kopt import recipe
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = np.random.rand(64, 8).astype("float32"), np.arange(64) % 3
    clustered = recipe.cluster(model, x, y, clusters=4, epochs=1, batch_size=16)
    assert len(np.unique(clustered.layers[0].kernel.numpy())) <= 4
    ```
    """
    from kopt import clustering

    _check_epochs(epochs, "epochs")
    reference = model if reference is None else reference
    if seed is not None:
        keras.utils.set_random_seed(seed)
    clustered = clustering.experimental.cluster_weights(model, clusters, preserve_sparsity=preserve_sparsity)
    recompile_like(clustered, reference, CLUSTER_LEARNING_RATE_FACTOR, learning_rate)
    clustered.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, **fit_kwargs)
    return recompile_like(clustering.strip_clustering(clustered), reference)


def quantize_aware(model, x, y=None, *, epochs, batch_size=None, reference=None, learning_rate=None, seed=None,
                   verbose=0, scheme=None, float_layers=None, **fit_kwargs):
    """Fine-tunes `model` quantization-aware, keeping its zero weights at zero (the recipe's second half).

    Args:
        model: a trained (or pruned and stripped) Keras model.
        x: training inputs, as for `model.fit`.
        y: training labels (None when `x` is a dataset of `(x, y)` batches).
        epochs: epochs of quantization-aware fine-tuning.
        batch_size: as for `model.fit`.
        reference: the compiled model whose compile arguments are reused (default: `model`).
        learning_rate: the fine-tuning learning rate (default: a tenth of the reference's constant one).
        seed: if not None, `keras.utils.set_random_seed(seed)` first.
        verbose: as for `model.fit`.
        scheme: the quantization scheme (default `Default8BitPrunePreserveQuantizeScheme()`, PQAT); after
            `cluster`, `kopt.experimental.combine.Default8BitClusterPreserveQuantizeScheme()` keeps the clusters.
        float_layers: layer names left float (not quantization-aware), e.g. the first of
            `kopt.analysis.sensitivity(...).keep_float_candidates()`; convert with `to_tflite(keep_float=...)`.
        **fit_kwargs: passed to `model.fit`.

    Returns:
        The quantization-aware model (`kopt.quantization.quantize_model` with `scheme`, by default
        `kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme()`: the zeros stay zero), trained,
        ready for `kopt.convert.to_tflite` (after CQAT, passed through `strip_clustering_cqat`).

    Example:

    ```python
    import keras
    import numpy as np
    from kopt import recipe
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = np.random.rand(64, 8).astype("float32"), np.arange(64) % 3
    qat = recipe.quantize_aware(model, x, y, epochs=1, batch_size=16)
    ```
    """
    from kopt import quantization

    _check_epochs(epochs, "epochs")
    reference = model if reference is None else reference
    if seed is not None:
        keras.utils.set_random_seed(seed)
    from kopt.experimental.combine import Default8BitPrunePreserveQuantizeScheme

    # tfmot's default scheme lets zeros change; the recipe's pruned model must stay pruned (PQAT).
    qat = quantization.quantize_model(model, quantize_scheme=scheme or Default8BitPrunePreserveQuantizeScheme(),
                                      float_layers=float_layers)
    recompile_like(qat, reference, QAT_LEARNING_RATE_FACTOR, learning_rate)
    qat.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, **fit_kwargs)
    from kopt.experimental.combine import Default8BitClusterPreserveQuantizeScheme, strip_clustering_cqat

    if isinstance(scheme, Default8BitClusterPreserveQuantizeScheme):
        # CQAT computes each kernel from its centroids; the converter needs the clustered values written in.
        qat = recompile_like(strip_clustering_cqat(qat), reference)
    return qat


def compress(model, x, y=None, *, sparsity=0.8, prune_epochs=2, qat_epochs=1, quantize=True, batch_size=None,
             seed=None, verbose=0, **fit_kwargs):
    """Compresses a trained model with kopt's recipe: prune -> strip -> quantization-aware fine-tuning.

    `prune(...)` then `quantize_aware(...)`: pruned to `sparsity` while fine-tuning for `prune_epochs` (a polynomial
    ramp over 70% of the steps, see `pruning_schedule`, at half the model's learning rate), stripped, then
    fine-tuned quantization-aware for `qat_epochs` (at a tenth of it), the zeros kept. Both reuse the model's
    compile arguments with a fresh optimizer. Convert the result with `kopt.convert.to_tflite`.

    Args:
        model: a trained, compiled Keras model.
        x: training inputs, as for `model.fit` (arrays or a finite `tf.data.Dataset` of `(x, y)` batches).
        y: training labels (None when `x` is a dataset).
        sparsity: final fraction of zeros in every prunable weight, in [0, 1); 0 skips pruning.
        prune_epochs: epochs of fine-tuning while pruning.
        qat_epochs: epochs of quantization-aware fine-tuning.
        quantize: False stops after pruning and returns the stripped float model.
        batch_size: as for `model.fit`; with the size of `x` and `prune_epochs` it sets the pruning schedule.
        seed: if not None, each phase that runs (pruning, QAT) is seeded (`keras.utils.set_random_seed`) in turn:
            the first with `seed`, the second with `seed + 1`.
        verbose: as for `model.fit`.
        **fit_kwargs: passed to both fine-tunings' `model.fit` (`shuffle`, `class_weight`, `callbacks`, ...).

    Returns:
        The quantization-aware model (or, with `quantize=False`, the stripped pruned model), compiled.

    Example:

    ```python
    import keras
    import numpy as np
    from kopt import convert, recipe
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    x, y = np.random.rand(64, 8).astype("float32"), np.arange(64) % 3
    model.fit(x, y, epochs=1, verbose=0)
    qat = recipe.compress(model, x, y, sparsity=0.5, prune_epochs=2, qat_epochs=1, batch_size=16)
    tflite = convert.to_tflite(qat, validation_data=x)
    ```
    """
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0 <= sparsity < 1:
        raise ValueError(f"`sparsity` must be a fraction in [0, 1) (0 skips pruning), got {sparsity!r}.")
    if not sparsity and not quantize:
        raise ValueError("`sparsity=0` with `quantize=False` would leave the model as it is: give a sparsity > 0, "
                         "or quantize=True.")
    if sparsity:
        _check_epochs(prune_epochs, "prune_epochs")
    if quantize:
        _check_epochs(qat_epochs, "qat_epochs")
    _check_compiled(model)
    result = model
    if sparsity:
        result = prune(model, x, y, sparsity=sparsity, epochs=prune_epochs, batch_size=batch_size, seed=seed,
                       verbose=verbose, **fit_kwargs)
        seed = None if seed is None else seed + 1
    if quantize:
        result = quantize_aware(result, x, y, epochs=qat_epochs, batch_size=batch_size, seed=seed, verbose=verbose,
                                **fit_kwargs)
    return result
