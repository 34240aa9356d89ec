"""Every `Example:` block in the public API's docstrings runs."""

import inspect
import re

import keras
import numpy as np
import pytest

import kopt
import kopt.datasets
import kopt.demo
import kopt.experimental.combine as combine
from kopt import (analysis, clustering, convert, distill, distribute, errors, manifest, quantization, search,
                  sparsity, structured)


def _public_objects():
    objects = {"kopt": kopt, "kopt.datasets.load_digits": kopt.datasets.load_digits, "kopt.demo.run": kopt.demo.run}
    for module, name in (("sparsity", sparsity), ("structured", structured), ("clustering", clustering),
                         ("quantization", quantization), ("analysis", analysis),
                         ("experimental.combine", combine),
                         ("convert", convert),
                         ("distill", distill), ("search", search),
                         ("distribute", distribute), ("manifest", manifest), ("errors", errors)):
        objects[f"kopt.{module}"] = name
        for attribute in name.__all__:
            value = getattr(name, attribute)
            if not isinstance(value, (int, float, str, dict)):  # constants are documented where they are used
                objects[f"kopt.{module}.{attribute}"] = value
    # Result containers are documented by the functions that return them.
    for name in ("BenchmarkResult", "ONNXInfo", "ONNXModel", "TFLiteInfo", "TFLiteModel", "ValidationReport"):
        objects.pop(f"kopt.convert.{name}", None)
    for name in ("ConversionError", "KoptError", "ValidationError"):  # the module's example raises and catches one
        objects.pop(f"kopt.errors.{name}", None)
    for name in ("MixedPrecisionResult", "MixedPrecisionStep"):
        objects.pop(f"kopt.analysis.{name}", None)
    for name in ("ChannelGroup", "LowRankReport", "LowRankRow"):
        objects.pop(f"kopt.structured.{name}", None)
    return objects


EXAMPLES = [
    (name, block)
    for name, obj in _public_objects().items()
    for block in re.findall(r"```python\n(.*?)```", inspect.getdoc(obj) or "", re.S)
]


def _namespace(code=""):
    """What the examples assume exists: a small model `model`, a pruned copy `pruned`, a clustered copy `clustered`,
    data `x`, `y` (the pruned and clustered copies only for examples that use them: they take most of the time)."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    x, y = np.random.rand(16, 8).astype("float32"), np.random.rand(16, 2).astype("float32")
    namespace = {"np": np, "keras": keras, "kopt": kopt, "model": model, "x": x, "y": y}
    if "pruned" in code:
        pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.8, 0, frequency=1))
        pruned.compile("adam", "mse")
        pruned.fit(x, y, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
        namespace.update(pruned=pruned, pruned_model=pruned)
    if "clustered" in code:
        clustered = clustering.cluster_weights(model, number_of_clusters=4)
        clustered.compile("adam", "mse")
        namespace.update(clustered=clustered, clustered_model=clustered)
    return namespace


def test_every_public_name_has_an_example():
    documented = {name for name, _ in EXAMPLES}
    missing = [n for n in _public_objects() if n not in documented]
    assert not missing, missing


@pytest.mark.parametrize("name, code", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = _namespace(code)
    exec(compile(code, f"<example of {name}>", "exec"), namespace)
