"""`low_rank`: exact on kernels of exactly low rank (the SVD mapping is right), fewer MACs, a plain model."""

import keras
import numpy as np
import pytest

from kopt import structured

L = keras.layers


def _low_rank_kernel(shape, rank, rng, spatial):
    if not spatial:
        return (rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))).astype("float32")
    kh, kw, cin, cout = shape
    matrix = rng.normal(size=(kh * cin, rank)) @ rng.normal(size=(rank, kw * cout))  # rows (i, c), columns (j, o)
    return matrix.reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3).astype("float32")


@pytest.mark.parametrize("strides, padding", [((1, 1), "same"), ((2, 2), "same"), ((1, 1), "valid"),
                                              ((2, 1), "valid")])
def test_kernels_of_exactly_low_rank_factorize_without_error(strides, padding):
    rng = np.random.default_rng(0)
    inputs = keras.Input((12, 12, 16))
    x = L.Conv2D(48, 3, strides=strides, padding=padding, activation="relu", name="spatial")(inputs)
    x = L.Conv2D(64, 1, name="pointwise")(x)
    x = L.Dense(96, name="dense")(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, L.Dense(3, name="head")(x))
    spatial = model.get_layer("spatial")
    spatial.set_weights([_low_rank_kernel((3, 3, 16, 48), 4, rng, True), rng.normal(size=48).astype("float32")])
    pointwise = model.get_layer("pointwise")
    pointwise.set_weights([_low_rank_kernel((48, 64), 5, rng, False)[None, None], np.zeros(64, "float32")])
    dense = model.get_layer("dense")
    dense.set_weights([_low_rank_kernel((64, 96), 6, rng, False), np.ones(96, "float32")])

    small, report = structured.low_rank(model, energy=0.99999, layers=["spatial", "pointwise", "dense"])
    ranks = {row.layer: row.rank for row in report.rows}
    assert ranks == {"spatial": 4, "pointwise": 5, "dense": 6}
    x = rng.normal(size=(4, 12, 12, 16)).astype("float32")
    np.testing.assert_allclose(small(x), model(x), rtol=1e-3, atol=1e-3)
    assert report.output_error < 1e-4
    # Two real layers each: a k x 1 then a 1 x k convolution, never the full kernel.
    assert small.get_layer("spatial_low_rank").kernel.shape == (3, 1, 16, 4)
    assert small.get_layer("spatial").kernel.shape == (1, 3, 4, 48)
    assert structured.count_macs(small) < structured.count_macs(model)
    assert sum(r.macs_after for r in report.rows) < sum(r.macs_before for r in report.rows)


def test_layers_with_no_saving_are_left_and_the_report_says_why(tmp_path):
    model = keras.Sequential([keras.Input((32,)), L.Dense(8, name="thin"), L.Dense(512, name="wide"),
                              L.Dense(4, name="head")])
    small, report = structured.low_rank(model, rank_ratio=0.9)
    rows = {row.layer: row for row in report.rows}
    assert rows["thin"].reason and "saves no MACs" in rows["thin"].reason
    assert [layer.name for layer in small.layers][:2] == ["thin", "wide"]  # left as they were
    assert isinstance(small, keras.Sequential)
    assert "left: rank" in str(report)

    small, report = structured.low_rank(model, rank_ratio=0.25, layers=["wide"])
    assert [layer.name for layer in small.layers] == ["thin", "wide_low_rank", "wide", "head"]
    path = tmp_path / "low_rank.keras"
    small.save(path)
    x = np.random.default_rng(0).normal(size=(3, 32)).astype("float32")
    np.testing.assert_allclose(keras.models.load_model(path)(x), small(x), atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(rank_ratio=0.0), "rank_ratio"), (dict(rank_ratio=1.5), "rank_ratio"), (dict(energy=0), "energy"),
    (dict(layers=["nope"]), "nope"),
])
def test_bad_input(kwargs, match):
    model = keras.Sequential([keras.Input((8,)), L.Dense(16), L.Dense(2)])
    with pytest.raises(ValueError, match=match):
        structured.low_rank(model, **kwargs)
