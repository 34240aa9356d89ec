"""CompressionTuner: a real search on digits, its front re-measured from the files, resume, failures, bad input."""

import gzip
import os

import keras
import keras_tuner
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from litert_truth import only_output
from test_pareto import brute_force_front

import kopt
from kopt.datasets import load_digits
from kopt.search import CompressionTuner


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def cnn(hp):
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(hp.Choice("filters", [8, 16]), 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def dense(hp):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


SPACE = {"sparsity": [0.0, 0.75], "quantization": ["int8", "float16", "dynamic", None], "qat": [True, False],
         "prune_epochs": 1, "qat_epochs": 1}


@pytest.fixture(scope="module")
def searched(digits, tmp_path_factory):
    (x, y), (x_val, y_val) = digits
    directory = tmp_path_factory.mktemp("search")
    tuner = CompressionTuner(cnn, compression=SPACE, max_trials=6, seed=7, directory=directory, latency_runs=10)
    tuner.search(x, y, epochs=3, batch_size=64, validation_data=(x_val, y_val), verbose=0)
    return tuner, directory


def test_every_trial_completes_with_a_file(searched):
    tuner, _ = searched
    results = tuner.results()
    assert len(results) == 6 and all(r.completed for r in results), [r.error for r in results]
    assert {r.compression["quantization"] for r in results} >= {"int8"}
    assert any(r.compression["sparsity"] > 0 for r in results)
    assert len({(r.hyperparameters["filters"], r.label) for r in results}) == 6  # no trial repeated


def test_front_is_complete_and_non_dominated(searched):
    tuner, _ = searched
    results = tuner.results()
    try:
        for objectives in (tuner.objectives, ("accuracy", "size")):
            expected = [results[i].trial_id for i in brute_force_front(results, objectives)]
            tuner.objectives = objectives
            assert [r.trial_id for r in tuner.pareto_front()] == expected
    finally:
        tuner.objectives = ("accuracy", "size", "latency")


def test_front_metrics_are_those_of_the_saved_files(searched, digits):
    tuner, _ = searched
    _, (x_val, y_val) = digits
    for result in tuner.results():
        with open(result.path, "rb") as f:
            content = f.read()
        assert result.metrics["size"] == len(content)
        assert result.metrics["size_gzip"] == len(gzip.compress(content, 9))
        accuracy = np.mean(only_output(content, x_val).argmax(-1) == y_val)
        assert result.metrics["accuracy"] == pytest.approx(accuracy, abs=1.01 / len(y_val))
        assert result.metrics["accuracy"] > 0.6  # trained, not chance
        if result.compression["quantization"] == "int8":  # full integer: int8 input
            runner = Interpreter(model_content=content).get_signature_runner()
            assert all(d["dtype"] == np.int8 for d in runner.get_input_details().values())
        if result.compression["sparsity"] > 0 and result.compression["quantization"] in (None, "int8"):
            zeros = max(np.mean(kernel == 0) for kernel in _constant_kernels(content))
            assert zeros >= 0.74


def _constant_kernels(content, min_size=1000):
    """The file's constant tensors of at least `min_size` values (weights; activations hold no data before a run)."""
    interpreter = Interpreter(model_content=content)
    kernels = []
    for detail in interpreter.get_tensor_details():
        if np.prod(detail["shape"]) < min_size:
            continue
        try:
            kernels.append(interpreter.get_tensor(detail["index"]))
        except ValueError:
            continue
    return kernels


def test_best_follows_the_first_objective_and_constraints(searched):
    tuner, directory = searched
    completed = tuner.results()
    most_accurate = max(completed, key=lambda r: (r.metrics["accuracy"], -r.metrics["size"]))
    assert tuner.get_best_hyperparameters()[0].values == most_accurate.hyperparameters
    # Reloading the same project runs no trial; a size bound makes the best the most accurate small file.
    bound = sorted(r.metrics["size"] for r in completed)[2]
    constrained = CompressionTuner(cnn, compression=SPACE, max_trials=6, seed=7, directory=directory,
                                   constraints={"size": bound})
    feasible = [r for r in completed if r.metrics["size"] <= bound]
    best = max(feasible, key=lambda r: (r.metrics["accuracy"], -r.metrics["size"]))
    assert constrained.get_best_hyperparameters()[0].values == best.hyperparameters
    model = constrained.get_best_models()[0]
    assert isinstance(model, keras.Model)
    # The feasible front: not empty (at least 3 trials meet the bound), exactly the brute-force front of the
    # feasible trials, and within the bound.
    front = constrained.pareto_front(feasible_only=True)
    expected = [feasible[i].trial_id for i in brute_force_front(feasible, constrained.objectives)]
    assert len(feasible) >= 3 and front
    assert [r.trial_id for r in front] == expected
    assert all(r.metrics["size"] <= bound for r in front)


def test_best_model_is_the_compressed_one(searched, digits):
    tuner, _ = searched
    _, (x_val, y_val) = digits
    best = tuner._ranked()[0]
    model = tuner.get_best_models()[0]
    with open(best.path, "rb") as f:
        file_out = only_output(f.read(), x_val)
    agreement = np.mean(model.predict(x_val, verbose=0).argmax(-1) == file_out.argmax(-1))
    assert agreement >= 0.97


def test_plot_writes_an_image(searched, tmp_path):
    tuner, _ = searched
    path = tuner.plot_pareto(str(tmp_path / "front.png"), title="digits")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["front.png"]  # nothing half-written left


class CountingHyperModel(keras_tuner.HyperModel):
    def __init__(self):
        super().__init__()
        self.fits = 0

    def build(self, hp):
        hp.Choice("unused", [1, 2, 3, 4])
        return dense(hp)

    def fit(self, hp, model, *args, **kwargs):
        self.fits += 1
        return model.fit(*args, **kwargs)


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_resume_does_not_retrain_finished_trials(digits, tmp_path):
    (x, y), validation = digits
    compression = {"sparsity": 0.0, "quantization": None}
    first = CountingHyperModel()
    CompressionTuner(first, compression=compression, max_trials=2, seed=1, directory=tmp_path,
                     latency_runs=2).search(x, y, epochs=1, validation_data=validation, verbose=0)
    assert first.fits == 2
    second = CountingHyperModel()
    tuner = CompressionTuner(second, compression=compression, max_trials=3, seed=1, directory=tmp_path,
                             latency_runs=2)
    tuner.search(x, y, epochs=1, validation_data=validation, verbose=0)
    assert second.fits == 1
    assert [r.status for r in tuner.results()] == ["COMPLETED"] * 3
    assert len({r.hyperparameters["unused"] for r in tuner.results()}) == 3


def test_failed_trials_are_reported_and_all_failing_raises(digits, tmp_path, capsys):
    (x, y), validation = digits

    def sometimes_broken(hp):
        model = dense(hp)
        if hp.Boolean("broken"):
            model.add(keras.layers.Lambda(lambda t: t * np.nan))  # to_tflite's validation rejects NaN outputs
        return model

    tuner = CompressionTuner(sometimes_broken, compression={"sparsity": 0.0, "quantization": None}, max_trials=2,
                             seed=2, directory=tmp_path / "some", latency_runs=2)
    tuner.search(x, y, epochs=1, validation_data=validation)
    lines = capsys.readouterr().out
    results = {r.hyperparameters["broken"]: r for r in tuner.results()}
    assert results[False].completed and results[True].status == "FAILED"
    # The validation's error: a ValueError (kopt.errors.ValidationError is one, named by its own type).
    assert results[True].error.startswith(("ValueError", "ValidationError")) and results[True].path is None
    assert "FAILED" in lines and "Trial 2/2" in lines
    assert [r.trial_id for r in tuner.pareto_front()] == [results[False].trial_id]

    def always_broken(hp):
        hp.Int("width", 1, 9)
        model = dense(hp)
        model.add(keras.layers.Lambda(lambda t: t * np.nan))
        return model

    every_error = r"Every trial of the search failed \(3\).*\n  (ValueError|ValidationError|ConversionError): "
    with pytest.raises(RuntimeError, match=every_error):
        CompressionTuner(always_broken, max_trials=10, directory=tmp_path / "all",
                         latency_runs=2).search(x, y, validation_data=validation, verbose=0)


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_distillation_trains_against_the_teacher(digits, tmp_path):
    (x, y), validation = digits
    # A teacher that always says "0": distilling from it (student_loss_weight 0.1) must ruin the student.
    teacher = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10, kernel_initializer="zeros",
                                                   bias_initializer=keras.initializers.Constant([9.0] + [0.0] * 9))])
    tuner = CompressionTuner(dense, compression={"teacher": teacher, "sparsity": 0.0, "quantization": None},
                             max_trials=2, directory=tmp_path, latency_runs=2, seed=3)
    tuner.search(x, y, epochs=3, validation_data=validation, verbose=0)
    accuracy = {r.compression["distillation"]: r.metrics["accuracy"] for r in tuner.results()}
    assert accuracy[False] > 0.85 and accuracy[True] < 0.5, accuracy


class StartRecorder(keras_tuner.HyperModel):
    """Records each trial's weights before training, with the trial it continues (hyperband)."""

    def __init__(self):
        super().__init__()
        self.starts = []

    def build(self, hp):
        return dense(hp)

    def fit(self, hp, model, *args, **kwargs):
        self.starts.append((hp.values.get("tuner/trial_id"), [w.copy() for w in model.get_weights()]))
        return model.fit(*args, **kwargs)


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_hyperband_continues_promoted_models(digits, tmp_path):
    (x, y), validation = digits
    recorder = StartRecorder()
    tuner = CompressionTuner(recorder, compression={"sparsity": [0.0, 0.5], "quantization": [None, "float16"],
                                                 "prune_epochs": 1},
                             oracle="hyperband", max_epochs=2, factor=2, directory=tmp_path, latency_runs=2, seed=1)
    tuner.search(x, y, validation_data=validation, verbose=0)
    results = tuner.results()
    assert all(r.completed for r in results) and len(results) >= 3
    continued = [(source, weights) for source, weights in recorder.starts if source]
    assert continued
    for source, weights in continued:  # starts from the float weights its source trial ended with
        trained = dense(None)
        trained.optimizer.build(trained.trainable_variables)
        trained.load_weights(os.path.join(tuner.get_trial_dir(source), "float.weights.h5"))
        for got, want in zip(weights, trained.get_weights()):
            np.testing.assert_array_equal(got, want)
    fresh = [weights for source, weights in recorder.starts if not source]
    assert not np.array_equal(fresh[0][0], continued[0][1][0])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"objectives": ("accuracy", "flops")}, ValueError, r"unknown names \['flops'\]"),
    ({"compression": {"sparsity": 0.95 + 0.1}}, ValueError, r"compression\['sparsity'\]"),
    ({"constraints": {"params": 10}}, ValueError, "unknown metric 'params'"),
    ({"constraints": {"accuracy": 90}}, ValueError, r"\(0, 1\]"),
    ({"oracle": "grid"}, ValueError, "'random', 'bayesian', 'hyperband'"),
    ({"oracle": "hyperband"}, ValueError, "max_epochs"),
    ({"max_trials": 0}, ValueError, "max_trials"),
    ({"seed": 0}, ValueError, "keras-tuner reads 0 as no seed"),
    ({"max_epochs": 3}, ValueError, r"\['max_epochs'\] apply to oracle='hyperband', not oracle='random'"),
    ({"loss": "mse"}, ValueError, "compile the model in the hypermodel"),
    ({"objective": "val_accuracy"}, ValueError,
     r"takes `objectives=`, not keras-tuner's `objective=` \(got objective='val_accuracy'\).*"
     r"\['accuracy', 'latency', 'size', 'size_gzip'\]"),
    ({"objective": keras_tuner.Objective("val_loss", "min")}, ValueError, "`objectives=`"),
])
def test_bad_arguments(kwargs, error, match, tmp_path):
    with pytest.raises(error, match=match):
        CompressionTuner(dense, directory=tmp_path, **kwargs)


class InterruptedOnce(CountingHyperModel):
    interrupted = False

    def fit(self, hp, model, *args, **kwargs):
        if self.fits == 1 and not InterruptedOnce.interrupted:
            InterruptedOnce.interrupted = True
            raise KeyboardInterrupt
        return super().fit(hp, model, *args, **kwargs)


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_an_interrupted_trial_runs_again_on_resume(digits, tmp_path):
    (x, y), validation = digits
    arguments = dict(compression={"sparsity": 0.0, "quantization": None}, max_trials=3, seed=1,
                     directory=tmp_path, latency_runs=2)
    with pytest.raises(KeyboardInterrupt):
        CompressionTuner(InterruptedOnce(), **arguments).search(x, y, epochs=1, validation_data=validation,
                                                               verbose=0)
    resumed = InterruptedOnce()
    tuner = CompressionTuner(resumed, **arguments)
    assert [r.status for r in tuner.results()] == ["COMPLETED", "RUNNING"]
    tuner.search(x, y, epochs=1, validation_data=validation, verbose=0)
    assert resumed.fits == 2  # the interrupted trial and the last one
    assert [r.status for r in tuner.results()] == ["COMPLETED"] * 3
    with pytest.raises(ValueError, match=r"another compression space \(there: \{'sparsity': 0.0\}; now: "):
        CompressionTuner(CountingHyperModel(),
                         **{**arguments, "compression": {"sparsity": 0.5, "quantization": None}})


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_oversized_models_fail_their_trial(digits, tmp_path):
    (x, y), validation = digits
    tuner = CompressionTuner(lambda hp: cnn(hp) if hp.Boolean("big") else dense(hp), max_model_size=1000,
                             compression={"sparsity": 0.0, "quantization": None}, max_trials=2, seed=4,
                             directory=tmp_path, latency_runs=2)
    tuner.search(x, y, epochs=1, validation_data=validation, verbose=0)
    errors = {r.hyperparameters["big"]: r.error for r in tuner.results()}
    assert errors[False] is None and "max_model_size=1000" in errors[True]


def test_bad_hypermodels_are_caught_before_any_trial(tmp_path):
    def uncompiled(hp):
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    with pytest.raises(ValueError, match="uncompiled model.*model.compile"):
        CompressionTuner(uncompiled, directory=tmp_path / "a")
    with pytest.raises(TypeError, match="must return a keras.Model, got str"):
        CompressionTuner(lambda hp: "model", directory=tmp_path / "b")
    with pytest.raises(TypeError, match="hypermodel"):
        CompressionTuner(42, directory=tmp_path / "c")


def test_validation_data_is_required(digits, tmp_path):
    (x, y), _ = digits
    tuner = CompressionTuner(dense, directory=tmp_path)
    with pytest.raises(ValueError, match="validation_data=\\(x_val, y_val\\)"):
        tuner.search(x, y, epochs=1)
    with pytest.raises(ValueError, match="validation_split"):
        tuner.search(x, y, epochs=1, validation_split=0.2, validation_data=(x, y))
    assert tuner.results() == []


def test_tf_data_training_and_validation(digits, tmp_path):
    import tensorflow as tf

    (x, y), (x_val, y_val) = digits
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    validation = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(100)
    tuner = CompressionTuner(dense, compression={"sparsity": 0.5, "quantization": "int8", "qat": False,
                                                 "prune_epochs": 1},
                             max_trials=1, directory=tmp_path, latency_runs=2)
    tuner.search(train, epochs=2, validation_data=validation, verbose=0)
    (result,) = tuner.results()
    with open(result.path, "rb") as f:
        content = f.read()
    assert result.metrics["accuracy"] == pytest.approx(np.mean(only_output(content, x_val).argmax(-1) == y_val),
                                                       abs=1.01 / len(y_val))
    assert max(np.mean(k == 0) for k in _constant_kernels(content, min_size=640)) >= 0.49  # the 64x10 kernel


def wide_cnn(hp):
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_the_channel_ratio_is_searched_and_its_file_is_smaller(digits, tmp_path):
    (x, y), (x_val, y_val) = digits
    tuner = CompressionTuner(wide_cnn, compression={"channels": [0.0, 0.5], "sparsity": 0.0, "quantization": None},
                             max_trials=6, seed=1, directory=tmp_path,
                             latency_runs=5)
    tuner.search(x, y, epochs=1, batch_size=64, validation_data=(x_val, y_val), verbose=0)
    by_ratio = {r.compression["channels"]: r for r in tuner.results() if r.completed}
    assert set(by_ratio) == {0.0, 0.5}
    assert by_ratio[0.5].metrics["size"] < 0.5 * by_ratio[0.0].metrics["size"]
    assert "50% channels removed" in by_ratio[0.5].label
    small = tuner.load_model(tuner.oracle.get_trial(by_ratio[0.5].trial_id))
    assert small.layers[0].filters == 16


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_the_number_of_clusters_is_searched_and_kept_in_the_int8_file(digits, tmp_path):
    (x, y), (x_val, y_val) = digits
    tuner = CompressionTuner(cnn, compression={"clusters": [0, 8], "sparsity": 0.5, "quantization": "int8",
                                               "qat": True, "prune_epochs": 1, "qat_epochs": 1},
                             max_trials=4, seed=3, directory=tmp_path, latency_runs=2)
    tuner.search(x[:512], y[:512], epochs=1, batch_size=64, validation_data=(x_val, y_val), verbose=0)
    by_clusters = {r.compression["clusters"]: r for r in tuner.results() if r.completed}
    assert set(by_clusters) == {0, 8}
    assert "8 clusters" in by_clusters[8].label and "clusters" not in by_clusters[0].label

    def kernels(result):  # the weight tensors of the trial's file, as LiteRT reads them
        interpreter = Interpreter(model_path=str(result.path))
        return [interpreter.get_tensor(d["index"]) for d in interpreter.get_tensor_details()
                if d["dtype"] == np.int8 and len(d["shape"]) in (2, 4) and d["shape"][0] in (8, 16, 10)
                and np.prod(d["shape"]) > 64]

    clustered, plain = kernels(by_clusters[8]), kernels(by_clusters[0])
    assert len(clustered) == len(plain) == 2  # the conv and the dense kernel
    # CQAT kept at most 8 values per output channel (per-channel int8), with the pruned zeros among them.
    assert max(len(np.unique(k[c])) for k in clustered for c in range(k.shape[0])) <= 8
    assert all(np.mean(k == 0) >= 0.45 for k in clustered)
    assert max(len(np.unique(k[c])) for k in plain for c in range(k.shape[0])) > 8


@pytest.mark.slow  # whole searches (slow tier, run by CI)
def test_trials_train_under_the_distribution_strategy(digits, tmp_path, monkeypatch):
    import tensorflow as tf

    (x, y), validation = digits
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    # Not the default collective all-reduce: two of those in one process (another test's) clash on instance keys.
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    fits = []
    fit = keras.Model.fit

    def recording_fit(model, *args, **kwargs):  # every fit of a trial: the main one, pruning, QAT
        fits.append((type(model).__name__, tf.distribute.get_strategy() is strategy,
                     all(isinstance(v.value, tf.distribute.DistributedValues) for v in model.trainable_variables)))
        return fit(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    tuner = CompressionTuner(dense, compression={"sparsity": 0.5, "quantization": "int8", "qat": True,
                                                 "prune_epochs": 1, "qat_epochs": 1},
                             max_trials=1, directory=tmp_path, latency_runs=2, distribution_strategy=strategy)
    assert tuner.distribution_strategy is strategy
    tuner.search(x, y, epochs=2, batch_size=64, validation_data=validation, verbose=0)
    (result,) = tuner.results()
    assert result.completed, result.error
    assert result.metrics["accuracy"] > 0.6 and os.path.getsize(result.path) == result.metrics["size"]
    assert len(fits) == 3, fits  # trained, pruned, QAT
    assert all(in_scope and mirrored for _, in_scope, mirrored in fits), fits


def small_cnn(hp):
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(10, name="logits")])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_the_number_of_layers_kept_float_is_searched(digits, tmp_path):
    from kopt import analysis

    (x, y), (x_val, y_val) = digits
    tuner = CompressionTuner(small_cnn, compression={"float_layers": [0, 1], "sparsity": 0.0, "quantization": "int8",
                                                     "qat": False},
                             max_trials=2, seed=3, directory=tmp_path, latency_runs=2)
    tuner.search(x[:512], y[:512], epochs=1, batch_size=64, validation_data=(x_val, y_val), verbose=0)
    by_count = {r.compression["float_layers"]: r for r in tuner.results() if r.completed}
    assert set(by_count) == {0, 1}
    assert "1 layer float" in by_count[1].label and "float" not in by_count[0].label.replace("float32", "")

    def float_ops(result):  # the compute ops of the trial's file that LiteRT runs in float
        interpreter = Interpreter(model_path=str(result.path))
        details = interpreter.get_tensor_details()
        return [op["op_name"] for op in interpreter._get_ops_details()
                if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")
                and details[op["outputs"][0]]["dtype"] == np.float32]

    assert float_ops(by_count[0]) == []
    # the layer kept float is the first candidate of the trial's own sensitivity analysis (same model, same data)
    final = tuner.load_model(tuner.oracle.get_trial(by_count[1].trial_id))
    first = analysis.sensitivity(final, x[:512], debugger=False).keep_float_candidates()[0]
    assert float_ops(by_count[1]) == [{"conv": "CONV_2D", "logits": "FULLY_CONNECTED"}[first]]
