"""Pareto fronts over measured objectives: which trials no other trial beats on every objective."""

DIRECTIONS = {"accuracy": "max", "size": "min", "size_gzip": "min", "latency": "min"}


def check_objectives(objectives):
    """Validates objective names and returns them as a tuple."""
    if isinstance(objectives, str):
        objectives = (objectives,)
    objectives = tuple(objectives)
    if not objectives:
        raise ValueError(f"`objectives` is empty; choose from {sorted(DIRECTIONS)}.")
    unknown = [o for o in objectives if o not in DIRECTIONS]
    if unknown:
        raise ValueError(f"`objectives` has unknown names {unknown}; the measured objectives are "
                         f"{sorted(DIRECTIONS)} (accuracy is maximized, the others minimized).")
    if len(set(objectives)) != len(objectives):
        raise ValueError(f"`objectives` names an objective twice: {list(objectives)}.")
    return objectives


def _signed(metrics, objectives):
    """The objectives as values to maximize."""
    return [metrics[o] if DIRECTIONS[o] == "max" else -metrics[o] for o in objectives]


def dominates(a, b, objectives):
    """Whether metrics `a` are at least as good as `b` on every objective and better on one.

    Example:

    ```python
    kopt.search.pareto.dominates({"accuracy": 0.9, "size": 10}, {"accuracy": 0.8, "size": 12}, ("accuracy", "size"))
    ```
    """
    sa, sb = _signed(a, objectives), _signed(b, objectives)
    return all(x >= y for x, y in zip(sa, sb)) and any(x > y for x, y in zip(sa, sb))


def pareto_front(results, objectives=("accuracy", "size", "latency")):
    """The completed results that no other completed result dominates, in their order.

    Args:
        results: `TrialResult`s (failed ones are ignored).
        objectives: names of the measured metrics to trade off: "accuracy"
            (maximized), "size", "size_gzip", "latency" (minimized).

    Returns:
        A list of `TrialResult`. Trials with identical metrics are all kept.

    Example:

    ```python
    def result(trial_id, accuracy, size):
        return kopt.search.TrialResult(trial_id, "COMPLETED", None, {}, {"accuracy": accuracy, "size": size},
                                       None, {})
    results = [result("0", 0.97, 9000), result("1", 0.95, 12000), result("2", 0.93, 4000)]
    front = kopt.search.pareto_front(results, objectives=("accuracy", "size"))  # trials "0" and "2"
    ```
    """
    objectives = check_objectives(objectives)
    completed = [r for r in results if r.completed]
    return [r for r in completed
            if not any(dominates(other.metrics, r.metrics, objectives) for other in completed if other is not r)]
