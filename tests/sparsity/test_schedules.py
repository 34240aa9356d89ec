"""Schedules: identical to tfmot's at every step, serializable, strict about bad arguments."""

import json

import keras
import numpy as np
import pytest
from keras import ops

from kopt.sparsity import ConstantSparsity, PolynomialDecay, PruningSchedule
from tests.oracle.run import run_oracle


def _random_cases(n_cases=60, seed=1):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        begin = int(rng.integers(0, 50))
        end = begin + int(rng.integers(1, 400))
        frequency = int(rng.choice([1, 2, 3, 7, 10, 100]))
        steps = sorted(set(rng.integers(0, end + 60, size=80).tolist()) | {begin, end, end + 1, 0})
        if i % 2 == 0:
            params = {
                "target_sparsity": float(rng.uniform(0, 0.99)),
                "begin_step": begin,
                "end_step": -1 if i % 6 == 0 else end,
                "frequency": frequency,
            }
            cases.append({"kind": "constant", "params": params, "steps": steps})
        else:
            initial = float(rng.uniform(0, 0.5))
            params = {
                "initial_sparsity": initial,
                "final_sparsity": float(rng.uniform(initial, 0.99)),
                "begin_step": begin,
                "end_step": end,
                "power": int(rng.choice([1, 2, 3, 4])),
                "frequency": frequency,
            }
            cases.append({"kind": "polynomial", "params": params, "steps": steps})
    return cases


def test_schedules_match_tfmot_at_every_step(tmp_path):
    cases = _random_cases()
    src = tmp_path / "cases.json"
    src.write_text(json.dumps(cases))
    expected = run_oracle("schedules", src, tmp_path / "out.npz")
    n_prune_steps = 0
    for i, case in enumerate(cases):
        cls = ConstantSparsity if case["kind"] == "constant" else PolynomialDecay
        schedule = cls(**case["params"])
        for j, step in enumerate(case["steps"]):
            should, sparsity = schedule(np.int64(step))
            assert bool(ops.convert_to_numpy(should)) == expected[f"should_{i}"][j], (case, step)
            assert np.float32(ops.convert_to_numpy(sparsity)) == expected[f"sparsity_{i}"][j], (case, step)
            n_prune_steps += int(expected[f"should_{i}"][j])
    assert n_prune_steps > 100  # the comparison covered pruning and non-pruning steps


def test_polynomial_decay_endpoints():
    schedule = PolynomialDecay(0.1, 0.8, begin_step=10, end_step=110, frequency=10)
    assert np.isclose(ops.convert_to_numpy(schedule(10)[1]), 0.1)
    assert np.isclose(ops.convert_to_numpy(schedule(110)[1]), 0.8)
    assert np.isclose(ops.convert_to_numpy(schedule(1000)[1]), 0.8)
    assert not bool(ops.convert_to_numpy(schedule(120)[0]))  # past end_step: no more updates


@pytest.mark.parametrize(
    "schedule",
    [ConstantSparsity(0.6, 3, 90, 7), ConstantSparsity(0.2, 0), PolynomialDecay(0.0, 0.9, 5, 500, power=2, frequency=3)],
)
def test_schedules_serialize(schedule):
    assert type(schedule).from_config(schedule.get_config()) == schedule
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert restored == schedule and isinstance(restored, PruningSchedule)


def test_schedule_works_inside_tf_function():
    import tensorflow as tf

    schedule = PolynomialDecay(0.0, 0.8, 0, 100, frequency=10)
    fn = tf.function(lambda step: schedule(step))
    should, sparsity = fn(tf.constant(50, tf.int64))
    assert bool(should) and np.isclose(float(sparsity), 0.8 - 0.8 * 0.5**3)


@pytest.mark.parametrize(
    "factory, match",
    [
        (lambda: ConstantSparsity(1.0, 0), "target_sparsity"),
        (lambda: ConstantSparsity(-0.1, 0), "target_sparsity"),
        (lambda: PolynomialDecay(0.0, 1.2, 0, 10), "final_sparsity"),
        (lambda: PolynomialDecay(-0.5, 0.5, 0, 10), "initial_sparsity"),
        (lambda: ConstantSparsity(0.5, 10, end_step=5), "end_step"),
        (lambda: PolynomialDecay(0.0, 0.5, 10, 5), "end_step"),
        (lambda: PolynomialDecay(0.0, 0.5, 0, -1), "end_step"),
        (lambda: PolynomialDecay(0.0, 0.5, 5, 5), "end_step"),
        (lambda: ConstantSparsity(0.5, 0, frequency=0), "frequency"),
        (lambda: ConstantSparsity(0.5, 0, frequency=-3), "frequency"),
        (lambda: ConstantSparsity(0.5, -1), "begin_step"),
        (lambda: ConstantSparsity(0.5, 0.5), "begin_step"),
        (lambda: ConstantSparsity("0.5", 0), "target_sparsity"),
    ],
)
def test_bad_schedule_arguments(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()
