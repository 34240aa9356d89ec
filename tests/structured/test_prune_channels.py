"""`prune_channels`: a smaller plain Keras model; identical outputs where nothing that matters was removed."""

import keras
import numpy as np
import pytest

from kopt import structured
from kopt._keras.sublayers import all_sublayers

L = keras.layers


def _branchy(seed=0):
    """Conv branches joined by Concatenate and Add, a depthwise conv, Flatten -> Dense: every coupling rule."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    a = L.Conv2D(16, 3, padding="same", activation="relu", name="a")(inputs)
    b = L.Conv2D(16, 1, activation="relu", name="b")(inputs)
    x = L.Concatenate()([a, b])
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.Conv2D(32, 1, name="y")(x)
    x = L.Add()([x, y])
    x = L.BatchNormalization(name="bn")(x)
    x = L.Conv2D(16, 1, activation="relu", name="c")(x)
    x = L.Dense(24, activation="relu", name="hidden")(L.Flatten()(L.MaxPooling2D()(x)))
    return keras.Model(inputs, L.Dense(5, name="head")(x))


def _x(model, n=8):
    return np.random.default_rng(1).normal(size=(n, *model.input_shape[1:])).astype("float32")


def test_ratio_zero_gives_the_same_model():
    model = _branchy()
    model.get_layer("bn").set_weights([np.random.default_rng(0).uniform(0.5, 2, 32) for _ in range(4)])
    same = structured.prune_channels(model, ratio=0.0)
    assert same.count_params() == model.count_params()
    np.testing.assert_array_equal(same(_x(model)), model(_x(model)))


def test_removing_channels_whose_weights_are_zero_leaves_the_outputs_identical():
    model = _branchy()
    rng = np.random.default_rng(0)
    # Half of the filters of c (and their biases) are zero: those channels are exactly 0 after the ReLU.
    kernel, bias = model.get_layer("c").get_weights()
    dead = rng.permutation(16)[:8]
    kernel[..., dead], bias[dead] = 0.0, 0.0
    model.get_layer("c").set_weights([kernel, bias])
    # ... and so are a quarter of the hidden units.
    kernel, bias = model.get_layer("hidden").get_weights()
    dead_units = rng.permutation(24)[:6]
    kernel[:, dead_units], bias[dead_units] = 0.0, 0.0
    model.get_layer("hidden").set_weights([kernel, bias])

    small = structured.prune_channels(model, ratio={"c": 0.5, "hidden": 0.25}, round_to=0)
    assert small.get_layer("c").filters == 8 and small.get_layer("hidden").units == 18
    kept_kernel = small.get_layer("c").get_weights()[0]
    assert np.all(np.abs(kept_kernel).reshape(-1, 8).sum(0) > 0)  # the zero filters are the ones removed
    np.testing.assert_allclose(small(_x(model)), model(_x(model)), atol=1e-5)
    # The Flatten -> Dense rows followed the channels: 3x3 positions x 8 channels.
    assert small.get_layer("hidden").get_weights()[0].shape == (3 * 3 * 8, 18)


def test_half_the_channels_of_every_group_and_a_plain_keras_model(tmp_path):
    model = _branchy()
    small = structured.prune_channels(model, ratio=0.5)
    # a and b, concatenated, are added to y: one group of 32 channels, half of which go (where they score lowest).
    assert small.get_layer("a").filters + small.get_layer("b").filters == 16
    assert small.get_layer("y").filters == 16 and small.get_layer("dw").get_weights()[0].shape[2] == 16
    assert small.get_layer("head").units == 5  # the model's outputs stay
    assert all(type(layer).__module__.startswith("keras.") for layer in all_sublayers(small))
    path = tmp_path / "small.keras"
    small.save(path)
    np.testing.assert_allclose(keras.models.load_model(path)(_x(model)), small(_x(model)), atol=1e-6)
    assert {layer.name for layer in model.layers} == {layer.name for layer in small.layers}
    assert model.get_layer("a").filters == 16  # the model itself is untouched


def test_round_to_keeps_multiples_and_global_ranking_takes_from_the_weakest_group():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10,)), L.Dense(40, name="strong"), L.Dense(40, name="weak"),
                              L.Dense(3, name="head")])
    small = structured.prune_channels(model, ratio=0.3)
    assert isinstance(small, keras.Sequential)
    assert small.get_layer("strong").units == 32  # 40 - 12 = 28, rounded up to 32
    # Scale the "weak" layer's filters down: globally ranked, its channels go first.
    kernel, bias = model.get_layer("weak").get_weights()
    model.get_layer("weak").set_weights([kernel * np.linspace(0.01, 1, 40) ** 4, bias])
    ranked = structured.prune_channels(model, ratio=0.5, round_to=0, global_ranking=True)
    assert ranked.get_layer("weak").units < 20 < ranked.get_layer("strong").units


def test_taylor_removes_channels_the_loss_does_not_use_even_with_large_weights():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), L.Dense(16, activation="relu", name="hidden"), L.Dense(2, name="head")])
    kernel, bias = model.get_layer("hidden").get_weights()
    unused = np.arange(8)
    kernel[:, unused] *= 50.0  # large filters ...
    model.get_layer("hidden").set_weights([kernel, bias])
    head_kernel, head_bias = model.get_layer("head").get_weights()
    head_kernel[unused] = 0.0  # ... that nothing reads
    model.get_layer("head").set_weights([head_kernel, head_bias])
    model.compile("adam", "mse")
    x = _x(model, 64)
    data = (x, np.random.default_rng(2).normal(size=(64, 2)).astype("float32"))

    by_norm = structured.prune_channels(model, ratio=0.5, round_to=0)
    by_taylor = structured.prune_channels(model, ratio=0.5, importance="taylor", data=data, round_to=0)
    np.testing.assert_allclose(by_taylor(x), model(x), atol=1e-4)  # only unused channels went
    assert np.abs(np.asarray(by_norm(x)) - np.asarray(model(x))).max() > 0.1


def test_bn_scale_ranks_by_gamma():
    model = _branchy()
    gamma = np.linspace(0.1, 3.0, 32)[np.random.default_rng(0).permutation(32)]
    bn = model.get_layer("bn")
    bn.set_weights([gamma] + bn.get_weights()[1:])
    small = structured.prune_channels(model, ratio=0.5, importance="bn_scale", round_to=0)
    np.testing.assert_allclose(np.sort(small.get_layer("bn").get_weights()[0]), np.sort(gamma)[16:], rtol=1e-6)


def test_ignored_layers_keep_their_groups():
    model = _branchy()
    small = structured.prune_channels(model, ratio=0.5, ignored_layers=["c", model.get_layer("hidden")])
    assert small.get_layer("c").filters == 16 and small.get_layer("hidden").units == 24
    assert small.get_layer("a").filters + small.get_layer("b").filters == 16


@pytest.mark.parametrize("kwargs, match", [
    (dict(ratio=1.0), "ratio.*\\[0, 1\\)"),
    (dict(ratio=-0.1), "ratio"),
    (dict(ratio="half"), "ratio"),
    (dict(ratio={"nope": 0.5}), "'nope'.*not in the model"),
    (dict(ratio={99: 0.5}), "group 99"),
    (dict(ignored_layers=["nope"]), "ignored_layers.*not a layer"),
    (dict(importance="l3"), "importance"),
    (dict(importance="taylor"), "data=\\(x, y\\)"),
    (dict(round_to=-1), "round_to"),
    (dict(ratio={"a": 0.5}, global_ranking=True), "global_ranking"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        structured.prune_channels(_branchy(), **kwargs)


def test_groups_left_whole_are_named_in_a_log_line(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="kopt"):
        structured.prune_channels(_branchy(), ratio=0.5)
    (line,) = [r.getMessage() for r in caplog.records if "left whole" in r.getMessage()]
    assert "head (output channels of the model" in line


def test_no_layer_loses_all_its_channels():
    """a (4 channels, small weights) and b (28) are concatenated and added to y: one group of 32, where the lowest
    half by score would be all of a's."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    a = L.Conv2D(4, 1, name="a")(inputs)
    b = L.Conv2D(28, 1, name="b")(inputs)
    y = L.Conv2D(32, 1, name="y")(inputs)
    x = L.Add()([L.Concatenate()([a, b]), y])
    model = keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    kernel, bias = model.get_layer("a").get_weights()
    model.get_layer("a").set_weights([kernel * 1e-3, bias])
    small = structured.prune_channels(model, ratio=0.5, round_to=0)
    assert small.get_layer("a").filters == 1
    assert small.get_layer("a").filters + small.get_layer("b").filters == small.get_layer("y").filters
