"""kopt.recipe: the one prune -> strip -> QAT recipe of `kopt demo`, the zoo and CompressionTuner."""

import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from kopt import recipe, sparsity
from kopt.quantization import QuantizeWrapper
from kopt.search import compression
from kopt.sparsity import PruneLowMagnitude


def _model():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 8)).astype("float32")
    return x, (x[:, 0] * 3).astype("int32").clip(0, 2)


def _mask_updates(schedule, total_steps):
    return [step for step in range(total_steps) if bool(schedule(step)[0])]


@pytest.mark.parametrize("samples, batch_size, epochs", [(1347, 32, 10), (1347, 32, 3), (96, 32, 1), (64, 16, 2),
                                                         (50_000, 64, 2)])
def test_schedule_reaches_the_target_within_the_fine_tuning(samples, batch_size, epochs):
    steps = recipe.steps_per_epoch(np.zeros((samples, 1)), batch_size)
    assert steps == -(-samples // batch_size)
    schedule = recipe.pruning_schedule(0.8, steps, epochs)
    updates = _mask_updates(schedule, steps * epochs)
    assert float(schedule(updates[-1])[1]) == pytest.approx(0.8)  # the last update, within the fit, hits the target
    assert schedule.end_step <= 0.7 * steps * epochs or schedule.end_step == schedule.frequency
    assert 1 <= schedule.frequency <= 100  # never tfmot's 100 on a short fit, never more than it on a long one
    sparsities = [float(schedule(step)[1]) for step in updates]
    assert np.all(np.diff(sparsities) >= 0)
    if steps * epochs >= 20:
        assert len(updates) >= 5 and sparsities[0] < 0.1  # a gradual ramp


def test_schedule_of_the_demo_and_zoo_data():
    """1347 digits in batches of 32 for 10 epochs: 430 steps, the ramp ends at 300 (70%), a mask update every 30."""
    schedule = recipe.pruning_schedule(0.8, recipe.steps_per_epoch(np.zeros((1347, 8, 8, 1)), 32), 10)
    assert (schedule.begin_step, schedule.end_step, schedule.frequency) == (0, 300, 30)


def test_unknown_steps_prune_at_a_constant_target():
    dataset = tf.data.Dataset.from_tensor_slices(np.zeros((10, 2))).repeat()
    assert recipe.steps_per_epoch(dataset) is None
    schedule = recipe.pruning_schedule(0.5, None, 3)
    assert isinstance(schedule, sparsity.ConstantSparsity) and schedule.frequency == 10


def test_the_tuner_uses_the_recipe():
    assert compression.pruning_schedule is recipe.pruning_schedule
    assert compression.steps_per_epoch is recipe.steps_per_epoch
    assert compression.recompile_like is recipe.recompile_like


class _LearningRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_begin(self, logs=None):
        self.seen.append(float(self.model.optimizer.learning_rate))


def test_compress_prunes_strips_and_fine_tunes_quantization_aware():
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=2, verbose=0)
    rates = _LearningRates()
    qat = recipe.compress(model, x, y, sparsity=0.75, prune_epochs=3, qat_epochs=1, batch_size=16,
                          callbacks=[rates])
    assert any(isinstance(layer, QuantizeWrapper) for layer in qat.layers)
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in qat.layers)
    assert all(v == pytest.approx(0.75, abs=0.01) for v in sparsity.get_sparsity(qat).values())  # zeros kept
    # The model's compile arguments with a fresh optimizer: half its learning rate pruning, a tenth in QAT.
    assert rates.seen == pytest.approx([1e-3, 2e-4])
    assert qat.compiled and qat.loss is not None
    assert model.layers[0].__class__ is keras.layers.Dense  # the trained model is left as it was


def test_quantize_false_returns_the_stripped_float_model():
    x, y = _data()
    model = _model()
    stripped = recipe.compress(model, x, y, sparsity=0.5, prune_epochs=2, quantize=False, batch_size=16)
    assert [type(layer) for layer in stripped.layers] == [keras.layers.Dense, keras.layers.Dense]
    assert all(v == pytest.approx(0.5, abs=0.01) for v in sparsity.get_sparsity(stripped).values())
    assert stripped.compiled  # ready to evaluate
    assert len(stripped.evaluate(x, y, verbose=0)) == 2


def test_sparsity_zero_only_quantizes():
    x, y = _data()
    qat = recipe.compress(_model(), x, y, sparsity=0, qat_epochs=1)
    assert any(isinstance(layer, QuantizeWrapper) for layer in qat.layers)
    assert all(v < 0.05 for v in sparsity.get_sparsity(qat).values())


def test_a_seed_repeats_the_result():
    x, y = _data()
    model = _model()
    model.fit(x, y, epochs=1, verbose=0)
    first, second = (recipe.compress(model, x, y, sparsity=0.5, prune_epochs=1, qat_epochs=1, seed=3).predict(
        x, verbose=0) for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_a_dataset_of_batches_trains_too():
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    qat = recipe.compress(_model(), dataset, sparsity=0.5, prune_epochs=2, qat_epochs=1)
    assert all(v == pytest.approx(0.5, abs=0.01) for v in sparsity.get_sparsity(qat).values())


def test_learning_rate_can_be_given():
    x, y = _data()
    rates = _LearningRates()
    recipe.quantize_aware(_model(), x, y, epochs=1, learning_rate=1e-4, callbacks=[rates])
    assert rates.seen == pytest.approx([1e-4])


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, r"`sparsity`.*\[0, 1\).*1.0"),
    ({"sparsity": 0.5, "prune_epochs": 0}, "`prune_epochs` must be an integer >= 1, got 0"),
    ({"qat_epochs": 1.5}, "`qat_epochs` must be an integer >= 1, got 1.5"),
    ({"sparsity": 0, "quantize": False}, "leave the model as it is"),
])
def test_bad_arguments_name_the_fix(kwargs, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        recipe.compress(_model(), x, y, **kwargs)


def test_an_uncompiled_model_is_refused_before_training():
    x, y = _data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"not compiled.*model.compile"):
        recipe.compress(model, x, y)


@pytest.mark.parametrize("name", ["compress", "prune", "quantize_aware", "pruning_schedule", "steps_per_epoch"])
def test_docstring_example_runs(name):
    doc = inspect.getdoc(getattr(recipe, name))
    assert "Args:" in doc and "Returns:" in doc
    (example,) = re.findall(r"```python\n(.*?)```", doc, re.S)
    exec(compile(example, f"kopt.recipe.{name} example", "exec"), {})


def test_quantize_aware_keeps_the_zero_positions_of_a_pruned_model():
    """The recipe passes the prune-preserve scheme: tfmot's default (plain QAT) lets zeros move at this rate."""
    x, y = _data()
    model = _model()
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    kernel[::2] = 0.0
    model.layers[0].kernel.assign(kernel)
    qat = recipe.quantize_aware(model, x, y, epochs=2, batch_size=16, learning_rate=1e-2)
    wrapper = next(layer for layer in qat.layers if isinstance(layer, QuantizeWrapper))
    assert wrapper.preserve_sparsity
    after = keras.ops.convert_to_numpy(wrapper.layer.kernel)
    np.testing.assert_array_equal(after == 0, kernel == 0)


def test_prune_cluster_then_cluster_preserving_qat_keeps_zeros_and_clusters_in_the_int8_file():
    from ai_edge_litert.interpreter import Interpreter

    from kopt import convert
    from kopt.experimental.combine import Default8BitClusterPreserveQuantizeScheme

    x, y = _data(256)
    model = _model()
    model.fit(x, y, epochs=2, verbose=0)
    pruned = recipe.prune(model, x, y, sparsity=0.5, epochs=2, batch_size=32)
    rates = _LearningRates()
    clustered = recipe.cluster(pruned, x, y, clusters=6, epochs=1, preserve_sparsity=True, reference=model,
                               callbacks=[rates])
    assert rates.seen == pytest.approx([2e-4])  # a tenth of the model's learning rate
    kernel = keras.ops.convert_to_numpy(clustered.layers[0].kernel)
    assert len(np.unique(kernel)) <= 6 and np.mean(kernel == 0) >= 0.5
    qat = recipe.quantize_aware(clustered, x, y, epochs=1, reference=model,
                                scheme=Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True))
    tflite = convert.to_tflite(qat, validation_data=x)  # full int8: strip_clustering_cqat ran in the recipe
    interpreter = Interpreter(model_content=bytes(tflite))
    (first,) = [interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()
                if d["dtype"] == np.int8 and tuple(d["shape"]) == (32, 8)]  # the first kernel, (out, in)
    assert len(np.unique(first)) <= 6 and np.mean(first == 0) >= 0.5
