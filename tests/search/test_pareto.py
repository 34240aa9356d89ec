"""Pareto fronts against a brute-force NumPy computation."""

import numpy as np
import pytest

from kopt.search import TrialResult, pareto_front
from kopt.search.pareto import dominates

SIGNS = {"accuracy": 1, "size": -1, "size_gzip": -1, "latency": -1}


def brute_force_front(results, objectives):
    """Indices of completed results that no other completed result dominates (all pairs, NumPy)."""
    done = [i for i, r in enumerate(results) if r.status == "COMPLETED"]
    values = np.array([[SIGNS[o] * results[i].metrics[o] for o in objectives] for i in done])  # maximize all
    at_least = (values[:, None, :] >= values[None, :, :]).all(-1)  # [j, i]: j >= i everywhere
    better = (values[:, None, :] > values[None, :, :]).any(-1)
    dominated = (at_least & better).any(0)
    return [done[k] for k in np.flatnonzero(~dominated)]


def _random_results(seed, n=40, fail_every=7):
    rng = np.random.default_rng(seed)
    results = []
    for i in range(n):
        metrics = {"accuracy": float(rng.choice([0.9, 0.95, 0.97, 0.99])), "size": int(rng.integers(1, 6) * 1000),
                   "size_gzip": int(rng.integers(1, 6) * 500), "latency": float(rng.choice([0.1, 0.2, 0.3]))}
        status = "FAILED" if i % fail_every == 3 else "COMPLETED"
        results.append(TrialResult(str(i), status, None if status == "COMPLETED" else "ValueError: x",
                                    {}, metrics if status == "COMPLETED" else {}, None, {}))
    return results


@pytest.mark.parametrize("objectives", [("accuracy", "size"), ("accuracy", "size", "latency"),
                                        ("size_gzip", "latency"), ("accuracy",)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_is_the_brute_force_front(objectives, seed):
    results = _random_results(seed)
    front = pareto_front(results, objectives)
    assert [r.trial_id for r in front] == [results[i].trial_id for i in brute_force_front(results, objectives)]


def test_ties_are_all_kept_and_failures_ignored():
    a = TrialResult("a", "COMPLETED", None, {}, {"accuracy": 0.9, "size": 10}, None, {})
    b = TrialResult("b", "COMPLETED", None, {}, {"accuracy": 0.9, "size": 10}, None, {})
    failed = TrialResult("c", "FAILED", "boom", {}, {}, None, {})
    assert [r.trial_id for r in pareto_front([a, b, failed], ("accuracy", "size"))] == ["a", "b"]
    assert not dominates(a.metrics, b.metrics, ("accuracy", "size"))


@pytest.mark.parametrize("objectives, match", [(("accuracy", "params"), r"unknown names \['params'\]"),
                                               ((), "empty"), (("size", "size"), "twice")])
def test_bad_objectives(objectives, match):
    with pytest.raises(ValueError, match=match):
        pareto_front([], objectives)
