"""`CompressionTuner`: a keras-tuner `Tuner` that searches model and compression together, measured on .tflite files."""

import copy
import gzip
import json
import logging
import os
import time

import keras
import keras_tuner
from keras_tuner.engine.tuner import maybe_distribute

from kopt.search import compression as compression_module
from kopt.search._memory import released_traces
from kopt.search.pareto import DIRECTIONS, check_objectives, pareto_front
from kopt.search.results import METRICS, TrialResult, format_line, format_table

logger = logging.getLogger("kopt")

ORACLES = ("random", "bayesian", "hyperband")
_FAIL_FAST = 3  # the search stops when this many trials failed and none completed
_FINE_TUNE_KWARGS = ("batch_size", "class_weight", "shuffle", "steps_per_epoch")
_TFLITE = "model.tflite"
_KERAS = "model.keras"
_FLOAT_WEIGHTS = "float.weights.h5"
_RECORD = "kopt_trial.json"
_SPACE = "kopt_compression.json"


class _CompressionHyperModel(keras_tuner.HyperModel):
    """The user's hypermodel, with the compression hyperparameters declared and what it returns checked."""

    def __init__(self, hypermodel, space):
        super().__init__(name="kopt_compression")
        if isinstance(hypermodel, keras_tuner.HyperModel):
            self._user_build, self._user_fit = hypermodel.build, hypermodel.fit
        elif callable(hypermodel):
            self._user_build, self._user_fit = hypermodel, None
        else:
            raise TypeError("`hypermodel` must be a function of `hp` returning a compiled keras.Model, or a "
                            f"keras_tuner.HyperModel; got {type(hypermodel).__name__}.")
        self.space = space

    def build(self, hp):
        compression_module.declare(hp, self.space)
        model = self._user_build(hp)
        if not isinstance(model, keras.Model):
            raise keras_tuner.errors.FatalTypeError(
                f"`hypermodel` must return a keras.Model, got {type(model).__name__}. Return the model from it.")
        if not getattr(model, "compiled", False):
            raise keras_tuner.errors.FatalValueError(
                f"`hypermodel` returned the uncompiled model '{model.name}'. Call `model.compile(optimizer, loss, "
                "metrics)` in the hypermodel before returning it (kopt fine-tunes with the same compile arguments).")
        try:
            model.get_compile_config()
        except Exception as e:  # a lambda loss, for instance
            raise keras_tuner.errors.FatalValueError(
                f"The compile arguments of the hypermodel's model cannot be serialized ({e}); kopt recompiles "
                "pruned and QAT models from them. Use Keras losses/metrics or registered serializable ones.") from e
        return model

    def fit(self, hp, model, *args, **kwargs):
        if self._user_fit is not None:
            return self._user_fit(hp, model, *args, **kwargs)
        return model.fit(*args, **kwargs)


_ORACLE_KWARGS = {"max_epochs": "hyperband", "factor": "hyperband", "hyperband_iterations": "hyperband",
                  "num_initial_points": "bayesian", "alpha": "bayesian", "beta": "bayesian"}


def _make_oracle(oracle, max_trials, seed, tuner_kwargs):
    objective = keras_tuner.Objective("score", direction="max")
    wrong = [k for k, owner in _ORACLE_KWARGS.items() if k in tuner_kwargs and owner != oracle]
    if wrong:
        raise ValueError(f"{wrong} apply to oracle={_ORACLE_KWARGS[wrong[0]]!r}, not oracle={oracle!r}.")
    if isinstance(oracle, keras_tuner.Oracle):
        oracle.objective = objective  # kopt scores trials itself (see CompressionTuner)
        return oracle
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 1):
        raise ValueError(f"`seed` must be an integer >= 1 or None, got {seed!r} (keras-tuner reads 0 as no seed, "
                         "so seed=0 would not repeat).")
    if not isinstance(max_trials, int) or isinstance(max_trials, bool) or max_trials < 1:
        raise ValueError(f"`max_trials` must be an integer >= 1, got {max_trials!r}.")
    # kopt stops a search whose first trials all fail; failures later on are reported, not fatal.
    common = dict(objective=objective, seed=seed, max_consecutive_failed_trials=10**9)
    if oracle == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if oracle == "bayesian":
        extra = {k: tuner_kwargs.pop(k) for k in ("num_initial_points", "alpha", "beta") if k in tuner_kwargs}
        # keras-tuner's default (3 random trials per hyperparameter) would make most searches random.
        extra.setdefault("num_initial_points", max(2, max_trials // 3))
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=max_trials, **extra, **common)
    if oracle == "hyperband":
        if "max_epochs" not in tuner_kwargs:
            raise ValueError("`oracle='hyperband'` needs `max_epochs=` (the most epochs one model trains for); "
                             "it decides the number of trials, so `max_trials` is not used.")
        extra = {k: tuner_kwargs.pop(k) for k in ("max_epochs", "factor", "hyperband_iterations")
                 if k in tuner_kwargs}
        return keras_tuner.oracles.HyperbandOracle(**extra, **common)
    raise ValueError(f"`oracle` must be one of {list(ORACLES)} or a keras_tuner.Oracle, got {oracle!r}.")


def _check_constraints(constraints):
    if constraints is None:
        return {}
    if not isinstance(constraints, dict):
        raise TypeError(f"`constraints` must be a dict such as {{'size': 100_000, 'latency': 2.0}}, "
                        f"got {type(constraints).__name__}.")
    for name, bound in constraints.items():
        if name not in DIRECTIONS:
            raise ValueError(f"`constraints` names the unknown metric {name!r}; the measured metrics are "
                             f"{sorted(DIRECTIONS)}.")
        if not isinstance(bound, (int, float)) or isinstance(bound, bool) or bound <= 0:
            raise ValueError(f"`constraints[{name!r}]` must be a number > 0, got {bound!r}.")
        if name == "accuracy" and bound > 1:
            raise ValueError(f"`constraints['accuracy']` is a least accuracy in (0, 1], got {bound!r}.")
    return dict(constraints)


def _inputs_only(x):
    """The inputs of a dataset of `(x, y)` pairs, or `x` itself."""
    if hasattr(x, "element_spec") and isinstance(x.element_spec, tuple):
        return x.map(lambda *element: element[0])
    return x


class CompressionTuner(keras_tuner.Tuner):
    """Searches a model's hyperparameters and its compression together, measuring every trial's .tflite file.

    Each trial builds the hypermodel's compiled model and trains it (distilled
    from a teacher if the trial says so), then compresses it with kopt: prunes
    it to the trial's sparsity while fine-tuning (`prune_low_magnitude`, then
    `strip_pruning`), fine-tunes it quantization-aware or calibrates it, and
    converts it with `kopt.convert.to_tflite` (validated against the Keras
    model). The file is measured: top-1 accuracy on the validation data run in
    LiteRT, its bytes raw and gzipped, and its median latency (one thread).
    Those are the trial's metrics; the file (`model.tflite`) and the compressed
    Keras model (`model.keras`) stay in the trial's folder.

    `pareto_front()` gives the trials no other trial beats on every objective;
    `results()` every trial, failed ones with their error. For keras-tuner's
    own API (`get_best_models`, `get_best_hyperparameters`, and the oracle's
    guidance), trials are ranked by the first objective, trials meeting every
    constraint first; the oracle maximizes a "score": the first objective
    (negated if it is minimized), less a penalty growing with how far a trial
    misses the constraints.

    Fine-tuning reuses the model's compile arguments with a fresh optimizer: at
    half its (constant) learning rate while pruning, at a tenth during QAT.

    Progress: one line per trial with what it measured, and a table at the end.
    A search continues where it stopped when run again with the same
    `directory` and `project_name`. Memory stays flat across trials: after each
    trial, `keras.backend.clear_session()` runs and the custom gradients its
    traced `fit`s registered in TensorFlow's global gradient registry are
    removed (they hold the traced graphs, which `clear_session` alone never
    frees). Models and functions made inside a trial do not outlive it.

    With `distribution_strategy=`, every model of a trial (the hypermodel's,
    the pruned, stripped and QAT ones, and the distiller) is built and trained
    in the strategy's scope, through keras-tuner's `maybe_distribute`; the
    conversion and the measurements run outside it.

    Args:
        hypermodel: a function of `hp` (a `keras_tuner.HyperParameters`)
            returning a compiled classifier Keras model, or a
            `keras_tuner.HyperModel` (its `fit` is used for the main training).
        compression: the compression space (see `kopt.search.compression`):
            a dict with keys "sparsity", "channels", "clusters", "float_layers", "quantization", "qat",
            "prune_epochs", "qat_epochs", "teacher", "distillation" and
            "temperature", each a
            value, a list of values to search, or a `(low, high[, step])`
            range. None: `DEFAULT_COMPRESSION` (sparsity 0 to 0.9, int8 QAT or
            PTQ, float16, dynamic or float32).
        objectives: the metrics the Pareto front trades off, from "accuracy"
            (maximized), "size", "size_gzip" and "latency" (minimized). The
            first one ranks trials for keras-tuner's API.
        oracle: "random", "bayesian", "hyperband" (needs `max_epochs=`; each
            trial's epochs come from it) or a `keras_tuner.Oracle` (its
            objective is replaced by kopt's score).
        max_trials: trials to run (random and bayesian oracles).
        directory: folder of the search's files (default: the current folder).
        project_name: subfolder of this search (default "kopt_search").
        overwrite: start afresh instead of resuming a search in that folder.
        constraints: bounds the best trial must meet, e.g.
            `{"size": 100_000, "latency": 2.0}` (at most) or
            `{"accuracy": 0.95}` (at least).
        seed: seed of the oracle, an integer >= 1 (keras-tuner takes 0 as no
            seed), or None.
        latency_runs: timed inferences per latency measurement.
        **tuner_kwargs: passed to `keras_tuner.Tuner` (e.g. `max_model_size`:
            models with more trainable parameters fail their trial;
            `distribution_strategy`: a single-worker `tf.distribute.Strategy`
            each trial trains under), or to the oracle ("max_epochs",
            "factor", "hyperband_iterations"; "num_initial_points", by default
            a third of `max_trials`). keras-tuner's `objective` is not taken:
            use `objectives`.

    A trial that distills trains with `kopt.distill.Distiller.fit`, not with the
    hypermodel's own `fit`. Resuming checks that the compression space is the
    one the project was searched with (else start a new `project_name`, or
    `overwrite=True`).

    Example:

    ```python
    def build(hp):
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(hp.Choice("units", [8, 16]),
                                  activation="relu"), keras.layers.Dense(3)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    x = np.random.rand(64, 8).astype("float32")
    y = (x[:, 0] * 3).astype("int32")
    tuner = kopt.search.CompressionTuner(
        build, compression={"sparsity": [0.0, 0.5], "quantization": "int8", "qat": False, "prune_epochs": 1},
        max_trials=1, seed=1, overwrite=True)
    tuner.search(x, y, epochs=1, validation_data=(x, y), verbose=0)
    best = tuner.pareto_front()[0]
    print(best.label, best.metrics, best.path)
    ```
    """

    def __init__(self, hypermodel, *, compression=None, objectives=("accuracy", "size", "latency"), oracle="random",
                 max_trials=10, directory=None, project_name=None, overwrite=False, constraints=None, seed=None,
                 latency_runs=50, **tuner_kwargs):
        if "objective" in tuner_kwargs:
            raise ValueError(
                f"CompressionTuner takes `objectives=`, not keras-tuner's `objective=` (got "
                f"objective={tuner_kwargs['objective']!r}): it measures each trial's .tflite file, so the objectives "
                f"are names from {sorted(DIRECTIONS)}, e.g. objectives=('accuracy', 'size'). The first one ranks "
                "trials for get_best_models(); the Pareto front trades them all off.")
        self.objectives = check_objectives(objectives)
        self.constraints = _check_constraints(constraints)
        self.space = compression_module.resolve_compression(compression)
        if not isinstance(latency_runs, int) or latency_runs < 1:
            raise ValueError(f"`latency_runs` must be an integer >= 1, got {latency_runs!r}.")
        self.latency_runs = latency_runs
        if tuner_kwargs.get("executions_per_trial", 1) != 1:
            raise ValueError("`executions_per_trial` must be 1: each trial is measured on one converted file.")
        overrides = [k for k in ("optimizer", "loss", "metrics") if tuner_kwargs.get(k) is not None]
        if overrides:
            raise ValueError(f"CompressionTuner does not take {overrides}: compile the model in the hypermodel, "
                             "since fine-tuning reuses its compile arguments.")
        self._validation = None
        self._verbose = 1
        self._total = max_trials if not isinstance(oracle, keras_tuner.Oracle) and oracle != "hyperband" else None
        oracle = _make_oracle(oracle, max_trials, seed, tuner_kwargs)
        super().__init__(oracle=oracle, hypermodel=_CompressionHyperModel(hypermodel, self.space),
                         directory=directory, project_name=project_name or "kopt_search", overwrite=overwrite,
                         **tuner_kwargs)
        self._check_same_space()

    def _check_same_space(self):
        """Records the compression space in the project; a resumed project must be searching the same one."""
        described = {k: (v.name if isinstance(v, keras.Model) else v) for k, v in self.space.items()}
        described = json.loads(json.dumps(described))  # tuples as lists, as read back
        path = os.path.join(self.project_dir, _SPACE)
        if os.path.exists(path):
            with open(path) as f:
                recorded = json.load(f)
            if recorded != described:
                changed = sorted(k for k in described if recorded.get(k) != described[k])
                raise ValueError(f"The project {self.project_dir} was searched with another compression space "
                                 f"(there: {({k: recorded.get(k) for k in changed})}; now: "
                                 f"{({k: described[k] for k in changed})}). Use another `project_name`, or "
                                 "`overwrite=True` to start afresh.")
            return
        with open(path, "w") as f:
            json.dump(described, f)

    # --- search ----------------------------------------------------------------------------------------------------

    def search(self, x=None, y=None, *, validation_data=None, verbose=1, **fit_kwargs):
        """Runs the trials that are left.

        Args:
            x: training inputs (arrays, or a `tf.data.Dataset` of `(x, y)`
                batches with `y=None`), as for `model.fit`.
            y: training labels.
            validation_data: `(x_val, y_val)` or a finite dataset of `(x, y)`
                batches: each trial's file is measured on it (required).
            verbose: 0 silent, 1 one line per trial and a final table, 2 also
                the progress of every fit.
            **fit_kwargs: passed to the hypermodel's `fit` (`epochs`,
                `batch_size`, `callbacks`, ...); `batch_size` also applies to
                fine-tuning.
        """
        if validation_data is None:
            raise ValueError("`validation_data` is required: CompressionTuner measures each trial's .tflite file "
                             "on it. Pass `validation_data=(x_val, y_val)`.")
        if "validation_split" in fit_kwargs:
            raise ValueError("`validation_split` is not supported: pass held-out `validation_data=(x_val, y_val)`, "
                             "on which each trial's .tflite file is measured.")
        self._validation = compression_module.as_arrays(validation_data, "validation_data")
        self._verbose = verbose
        self.oracle.verbose = 0  # kopt prints its own line per trial
        fit_kwargs.pop("verbose", None)
        super().search(x, y, validation_data=validation_data, **fit_kwargs)

    def run_trial(self, trial, x=None, y=None, validation_data=None, **fit_kwargs):
        start = time.perf_counter()
        folder = self.get_trial_dir(trial.trial_id)
        try:
            with released_traces():  # the trial's models and traced functions go with it: memory stays flat
                metrics = self._train_compress_measure(trial, folder, x, y, validation_data, fit_kwargs)
        except keras_tuner.errors.FatalError:
            raise
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            self._record(folder, time.perf_counter() - start, error)
            raise keras_tuner.errors.FailedTrialError(error) from e
        seconds = time.perf_counter() - start
        self._record(folder, seconds, None)
        return {"score": self._score(metrics), **metrics}

    def _fit_verbose(self):
        return 2 if self._verbose >= 2 else 0

    def _train(self, trial, model, compression, folder, x, y, validation_data, fit_kwargs):
        """The main training (distilled if the trial says so); hyperband budgets its epochs."""
        hp = trial.hyperparameters
        fit_kwargs = dict(fit_kwargs)
        fit_kwargs["callbacks"] = copy.deepcopy(fit_kwargs.get("callbacks") or [])
        if "tuner/epochs" in hp.values:
            fit_kwargs["epochs"] = hp.values["tuner/epochs"]
            fit_kwargs["initial_epoch"] = hp.values["tuner/initial_epoch"]
            if hp.values.get("tuner/trial_id"):  # continue the model this one is promoted from
                model.optimizer.build(model.trainable_variables)  # its saved slots load too
                model.load_weights(os.path.join(self.get_trial_dir(hp.values["tuner/trial_id"]), _FLOAT_WEIGHTS))
        if compression["distillation"]:
            from kopt import distill

            distiller = distill.Distiller(self.space["teacher"], model,
                                          distill.LogitsDistillation(temperature=compression["temperature"]))
            compression_module.recompile_like(distiller, model)
            distiller.fit(x, y, validation_data=validation_data, verbose=self._fit_verbose(), **fit_kwargs)
        else:
            self.hypermodel.fit(hp, model, x, y, validation_data=validation_data, verbose=self._fit_verbose(),
                                **fit_kwargs)
        if isinstance(self.oracle, keras_tuner.oracles.HyperbandOracle):
            model.save_weights(os.path.join(folder, _FLOAT_WEIGHTS))

    def _try_build(self, hp):
        """keras-tuner's build: `clear_session()`, the hypermodel built under `maybe_distribute`, the size check."""
        try:
            return super()._try_build(hp)
        except keras_tuner.errors.FailedTrialError as e:
            if not str(e).startswith("Oversized model"):
                raise
            raise keras_tuner.errors.FailedTrialError(
                f"{e} It has more trainable parameters than max_model_size={self.max_model_size}.") from e

    def _train_compress_measure(self, trial, folder, x, y, validation_data, fit_kwargs):
        from kopt import convert

        compression = compression_module.trial_compression(trial.hyperparameters.values, self.space)
        # Every model of the trial is made and trained in the strategy's scope (keras-tuner's `maybe_distribute`,
        # which `_try_build` uses too); the conversion and the measurements run outside it.
        model = self._try_build(trial.hyperparameters)
        with maybe_distribute(self.distribution_strategy):
            self._train(trial, model, compression, folder, x, y, validation_data, fit_kwargs)
            final, kept = self._compress(model, compression, x, y, fit_kwargs)

        mode = compression["quantization"]
        x_val, y_val = self._validation
        path = os.path.join(folder, _TFLITE)
        keep_float = kept or None  # mixed precision: the layers int8 hurts most stay float
        if mode == "int8" and compression["qat"]:  # a QAT model: the converter reads its learned ranges
            tflite = convert.to_tflite(final, path, validation_data=x_val, keep_float=keep_float)
        elif mode in ("int8", "int16x8"):
            tflite = convert.to_tflite(final, path, quantization=mode, representative_data=_inputs_only(x),
                                       validation_data=x_val, keep_float=keep_float)
        else:
            tflite = convert.to_tflite(final, path, quantization=mode, validation_data=x_val)
        if not getattr(final, "compiled", False):  # a stripped model: saved ready to evaluate or fine-tune
            with maybe_distribute(self.distribution_strategy):
                compression_module.recompile_like(final, model)
        final.save(os.path.join(folder, _KERAS))
        return {
            "accuracy": convert.evaluate(tflite, x_val, y_val),
            "size": len(tflite),
            "size_gzip": len(gzip.compress(bytes(tflite), 9)),
            "latency": float(convert.benchmark(tflite, threads=1, runs=self.latency_runs)),
        }

    def _compress(self, model, compression, x, y, fit_kwargs):
        """The trained model pruned (channels, then weights), clustered and made quantization-aware, as the trial says,
        and the layers kept float (mixed precision).

        Weight pruning, clustering and QAT are `kopt.recipe`'s (as in `kopt demo` and the model zoo); QAT keeps the
        zeros, and the clusters of a clustered trial.
        """
        from kopt import recipe

        tune = {k: fit_kwargs[k] for k in _FINE_TUNE_KWARGS if k in fit_kwargs}
        final = model
        if compression["channels"] > 0:  # fewer channels: a smaller, faster network, fine-tuned
            from kopt import structured

            final = structured.prune_channels(model, ratio=compression["channels"])
            compression_module.recompile_like(final, model, learning_rate_factor=recipe.PRUNE_LEARNING_RATE_FACTOR)
            final.fit(x, y, epochs=compression["prune_epochs"], verbose=self._fit_verbose(), **tune)
        if compression["sparsity"] > 0:
            final = recipe.prune(final, x, y, sparsity=compression["sparsity"], epochs=compression["prune_epochs"],
                                 reference=model, verbose=self._fit_verbose(), **tune)
        scheme = None
        if compression.get("clusters"):  # fewer distinct values per kernel; a pruned model keeps its zeros
            final = recipe.cluster(final, x, y, clusters=compression["clusters"], epochs=compression["prune_epochs"],
                                   preserve_sparsity=compression["sparsity"] > 0, reference=model,
                                   verbose=self._fit_verbose(), **tune)
            from kopt.experimental.combine import Default8BitClusterPreserveQuantizeScheme

            scheme = Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=compression["sparsity"] > 0)
        kept = []
        if compression["quantization"] == "int8" and compression.get("float_layers"):
            from kopt import analysis

            report = analysis.sensitivity(final, _inputs_only(x), debugger=False)
            kept = report.keep_float_candidates()[:compression["float_layers"]]
            logger.info("trial keeps float: %s", ", ".join(kept) or "(no layer gains from it)")
        if compression["quantization"] == "int8" and compression["qat"]:
            final = recipe.quantize_aware(final, x, y, epochs=compression["qat_epochs"], reference=model,
                                          verbose=self._fit_verbose(), scheme=scheme, float_layers=kept or None,
                                          **tune)
        return final, kept

    def _record(self, folder, seconds, error):
        with open(os.path.join(folder, _RECORD), "w") as f:
            json.dump({"seconds": seconds, "error": error}, f)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        results = self.results()
        if self._verbose:
            result = next(r for r in results if r.trial_id == trial.trial_id)
            number = self.oracle.start_order.index(trial.trial_id) + 1
            print(format_line(result, number, self._total or "?"), flush=True)
        failed = [r for r in results if r.status == "FAILED"]
        if len(failed) >= _FAIL_FAST and not any(r.completed for r in results):
            raise RuntimeError(self._all_failed_message(failed))

    def on_search_end(self):
        super().on_search_end()
        results = self.results()
        if not any(r.completed for r in results):
            raise RuntimeError(self._all_failed_message([r for r in results if not r.completed]))
        if self._verbose:
            front = {r.trial_id for r in self.pareto_front()}
            print(f"\n{len(results)} trials, Pareto front over {', '.join(self.objectives)} marked *:")
            print(format_table(results, front), flush=True)

    @staticmethod
    def _all_failed_message(failed):
        errors = sorted({r.error or r.status for r in failed})
        return (f"Every trial of the search failed ({len(failed)}), so there is no result. "
                "Their errors:\n  " + "\n  ".join(errors))

    # --- scoring -----------------------------------------------------------------------------------------------------

    def _violation(self, metrics):
        """How far `metrics` miss the constraints, relative to each bound (0 when all are met)."""
        total = 0.0
        for name, bound in self.constraints.items():
            value = metrics[name]
            miss = (bound - value) if DIRECTIONS[name] == "max" else (value - bound)
            total += max(0.0, miss) / bound
        return total

    def _signed_primary(self, metrics):
        primary = self.objectives[0]
        return metrics[primary] if DIRECTIONS[primary] == "max" else -metrics[primary]

    def _score(self, metrics):
        signed = self._signed_primary(metrics)
        violation = self._violation(metrics)
        return signed - violation * (1.0 + abs(signed)) if violation else signed

    def feasible(self, result):
        """Whether a completed `TrialResult` meets every constraint."""
        return result.completed and self._violation(result.metrics) == 0

    def _ranked(self):
        completed = [r for r in self.results() if r.completed]
        signs = [1 if DIRECTIONS[o] == "max" else -1 for o in self.objectives]

        def key(r):
            return (self._violation(r.metrics), *[-s * r.metrics[o] for s, o in zip(signs, self.objectives)])

        return sorted(completed, key=key)

    # --- results -----------------------------------------------------------------------------------------------------

    def results(self):
        """Every trial so far, in the order they started, as `TrialResult`s (failed ones with their error).

        Returns:
            A list of `TrialResult`.
        """
        results = []
        for trial_id in self.oracle.start_order:
            trial = self.oracle.get_trial(trial_id)
            folder = self.get_trial_dir(trial_id)
            record = {}
            if os.path.exists(os.path.join(folder, _RECORD)):
                with open(os.path.join(folder, _RECORD)) as f:
                    record = json.load(f)
            status = trial.status
            completed = status == "COMPLETED"
            metrics = {}
            if completed:
                metrics = {m: float(trial.metrics.get_last_value(m)) for m in METRICS}
                metrics["size"], metrics["size_gzip"] = int(metrics["size"]), int(metrics["size_gzip"])
            error = None if completed else (record.get("error") or _last_line(trial.message))
            path = os.path.join(folder, _TFLITE)
            results.append(TrialResult(
                trial_id=trial_id, status=status, error=error,
                hyperparameters=dict(trial.hyperparameters.values), metrics=metrics,
                path=path if completed and os.path.exists(path) else None,
                compression=compression_module.trial_compression(trial.hyperparameters.values, self.space),
                seconds=record.get("seconds")))
        return results

    def pareto_front(self, feasible_only=False):
        """The completed trials that no other completed trial beats on every objective.

        Args:
            feasible_only: consider only the trials that meet `constraints`.

        Returns:
            A list of `TrialResult`, in the order the trials started.
        """
        results = self.results()
        if feasible_only:
            results = [r for r in results if self.feasible(r)]
        return pareto_front(results, self.objectives)

    def plot_pareto(self, path, title=None):
        """Writes a figure of accuracy against size and latency, the Pareto front highlighted.

        Args:
            path: the image file (its extension picks the format: .png, .svg, .pdf).
            title: the figure's title.

        Returns:
            `path`.
        """
        from kopt.search.plot import plot_pareto

        return plot_pareto(self.results(), self.pareto_front(), path, title=title)

    def get_best_hyperparameters(self, num_trials=1):
        """The hyperparameters of the best trials: constraints met first, then by the first objective."""
        return [self.oracle.get_trial(r.trial_id).hyperparameters for r in self._ranked()[:num_trials]]

    def get_best_models(self, num_models=1):
        """The compressed Keras models of the best trials (see `get_best_hyperparameters`), loaded from their files."""
        return [self.load_model(self.oracle.get_trial(r.trial_id)) for r in self._ranked()[:num_models]]

    def load_model(self, trial):
        import kopt.quantization  # noqa: F401  (registers kopt's layers for loading)
        import kopt.sparsity  # noqa: F401

        return keras.saving.load_model(os.path.join(self.get_trial_dir(trial.trial_id), _KERAS))

    def results_summary(self, num_trials=10):
        """Prints the best trials as a table (the Pareto front marked *)."""
        front = {r.trial_id for r in self.pareto_front()}
        print(format_table(self._ranked()[:num_trials], front))


def _last_line(message):
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None
