"""`channel_groups`: which channels must go together, on graphs whose coupling is known by construction."""

import keras
import pytest

from kopt import structured
from custom_layers import ScaledSum

L = keras.layers


def _by_producer(groups):
    return {tuple(g.producers): g for g in groups}


def test_residual_adds_join_groups_and_per_channel_layers_follow():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(16, 3, padding="same", name="a")(inputs)
    a = L.BatchNormalization(name="a_bn")(a)
    b = L.DepthwiseConv2D(3, padding="same", name="b_dw")(a)
    b = L.Conv2D(16, 1, name="b")(b)
    x = L.Add(name="residual")([a, b])
    c = L.Conv2D(16, 1, name="c")(L.ReLU()(x))
    x = L.Add()([x, c])
    outputs = L.Dense(3, name="head")(L.GlobalAveragePooling2D()(x))
    groups = _by_producer(structured.channel_groups(keras.Model(inputs, outputs)))
    assert set(groups) == {("a", "b", "c"), ("head",)}
    residual = groups[("a", "b", "c")]
    assert residual.channels == 16 and residual.prunable
    assert {"a_bn", "b_dw", "head"} <= set(residual.layers)  # per-channel layers and the reader
    assert not groups[("head",)].prunable and "output" in groups[("head",)].reason


def test_concatenate_maps_channels_with_offsets_and_flatten_per_position():
    inputs = keras.Input((4, 4, 3))
    a = L.Conv2D(8, 1, name="a")(inputs)
    b = L.Conv2D(16, 1, name="b")(inputs)
    x = L.Concatenate()([a, b])
    x = L.Conv2D(24, 1, name="mix")(x)
    y = L.Dense(5, name="dense")(L.Flatten()(x))
    model = keras.Model(inputs, L.Dense(2, name="head")(y))
    groups = _by_producer(structured.channel_groups(model))
    assert groups[("a",)].channels == 8 and groups[("b",)].channels == 16  # separate groups, both read by mix
    assert "mix" in groups[("a",)].layers and "mix" in groups[("b",)].layers
    assert groups[("mix",)].channels == 24 and "dense" in groups[("mix",)].layers
    assert groups[("dense",)].prunable


def test_squeeze_excite_couples_the_expanding_dense_with_the_convolution():
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(32, 3, padding="same", name="conv")(inputs)
    s = L.GlobalAveragePooling2D(keepdims=True)(x)
    s = L.Conv2D(8, 1, activation="relu", name="squeeze")(s)
    s = L.Conv2D(32, 1, activation="sigmoid", name="excite")(s)
    x = L.Multiply()([x, s])
    x = x * 0.5  # a plain operation with a constant passes channels through
    outputs = L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x))
    groups = _by_producer(structured.channel_groups(keras.Model(inputs, outputs)))
    assert ("conv", "excite") in groups and groups[("conv", "excite")].prunable
    assert groups[("squeeze",)].prunable


def test_groups_kopt_cannot_slice_are_left_with_the_reason():
    inputs = keras.Input((6, 8))
    x = L.Dense(8, name="in_proj")(inputs)
    x = L.GRU(8, return_sequences=True, name="rnn")(x)
    y = L.Dense(12, name="to_reshape")(x)
    y = L.Reshape((6, 4, 3))(y)
    y = L.Reshape((6, 12))(y)
    outputs = L.Dense(2, name="head")(L.GlobalAveragePooling1D()(L.Concatenate()([x, y])))
    groups = _by_producer(structured.channel_groups(keras.Model(inputs, outputs)))
    assert not groups[("in_proj",)].prunable and "rnn" in groups[("in_proj",)].reason
    assert not groups[("to_reshape",)].prunable and "reshape" in groups[("to_reshape",)].reason.lower()
    assert "left" in str(groups[("in_proj",)])


def _transformer_block():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    x = L.Dense(32, name="embed")(inputs)
    attended = L.MultiHeadAttention(4, 8, name="mha")(x, x)
    x = L.LayerNormalization(name="norm")(L.Add()([x, attended]))
    hidden = L.Dense(64, activation="gelu", name="mlp_in")(x)
    x = L.Add()([x, L.Dense(32, name="mlp_out")(hidden)])
    return keras.Model(inputs, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(x)))


def test_attention_heads_and_mlp_widths_are_groups():
    import numpy as np

    model = _transformer_block()
    groups = _by_producer(structured.channel_groups(model))
    assert groups[("mha",)].channels == 4 and groups[("mha",)].prunable  # the heads
    assert groups[("mlp_in",)].channels == 64 and groups[("mlp_in",)].prunable  # the MLP width
    hidden = groups[("embed", "mlp_out")]  # the residual stream: attention output and MLP output added to it
    assert hidden.channels == 32 and {"mha", "norm", "head"} <= set(hidden.layers)

    small = structured.prune_channels(model, ratio={"mha": 0.5, "mlp_in": 0.5}, round_to=0)
    assert small.get_layer("mha").num_heads == 2 and small.get_layer("mlp_in").units == 32
    x = np.random.default_rng(0).normal(size=(4, 6, 16)).astype("float32")
    assert np.all(np.isfinite(small(x)))
    np.testing.assert_allclose(structured.prune_channels(model, ratio=0.0)(x), model(x), atol=1e-5)


def test_heads_whose_weights_are_zero_are_removed_without_changing_the_outputs():
    import numpy as np

    model = _transformer_block()
    mha = model.get_layer("mha")
    values = []
    for variable in mha.weights:
        value = keras.ops.convert_to_numpy(variable).copy()
        sublayer, name = variable.path.split("/")[-2:]
        if sublayer == "value":  # heads 1 and 3 give nothing: zero value kernel and bias
            if name == "kernel":
                value[:, [1, 3]] = 0.0
            else:
                value[[1, 3]] = 0.0
        values.append(value)
    mha.set_weights(values)
    kernel = keras.ops.convert_to_numpy(mha.output_dense.kernel).copy()
    kernel[[1, 3]] = 0.0
    mha.output_dense.kernel.assign(kernel)
    small = structured.prune_channels(model, ratio={"mha": 0.5}, round_to=0)
    assert small.get_layer("mha").num_heads == 2
    x = np.random.default_rng(1).normal(size=(4, 6, 16)).astype("float32")
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)


def test_a_sequential_model_and_bad_input():
    model = keras.Sequential([keras.Input((8,)), L.Dense(16, name="hidden"), L.Dense(2, name="head")])
    groups = structured.channel_groups(model)
    assert [g.producers for g in groups] == [["hidden"], ["head"]]
    with pytest.raises(ValueError, match="not built"):
        structured.channel_groups(keras.Sequential([L.Dense(2)]))
    with pytest.raises(ValueError, match="Sequential or Functional"):
        structured.channel_groups(L.Dense(2))


def test_nested_models_are_followed_as_if_inlined():
    inner = keras.Sequential([keras.Input((8,)), L.Dense(16, name="in1"), L.Dense(16, name="in2")], name="inner")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, L.Dense(2, name="head")(inner(inputs)))
    groups = _by_producer(structured.channel_groups(model))
    assert groups[("in1",)].prunable and "in2" in groups[("in1",)].layers
    assert groups[("in2",)].prunable and "head" in groups[("in2",)].layers
    small = structured.prune_channels(model, ratio=0.5, round_to=0)
    assert small.get_layer("inner").get_layer("in1").units == 8


def test_a_keras_hub_cnn_prunes_through_its_backbone():
    import keras_hub
    import numpy as np

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[2, 2], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        use_pre_activation=False, image_shape=(32, 32, 3))
    model = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=10)
    groups = structured.channel_groups(model)
    assert [g.prunable for g in groups].count(False) == 1  # only the 10 logits stay
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(structured.prune_channels(model, ratio=0.0)(x), model(x), atol=1e-5)
    assert structured.prune_channels(model, ratio=0.5).count_params() < 0.3 * model.count_params()


def test_a_weightless_custom_layer_is_followed_through_its_operations():
    import numpy as np

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = L.Conv2D(16, 3, padding="same", name="a")(inputs)
    x = ScaledSum(name="scaled")([x, L.Conv2D(16, 1, name="b")(x)])
    model = keras.Model(inputs, L.Dense(2, name="head")(L.GlobalAveragePooling2D()(x)))
    groups = _by_producer(structured.channel_groups(model))
    assert ("a", "b") in groups and groups[("a", "b")].prunable
    small = structured.prune_channels(model, ratio=0.5, round_to=0)
    assert small.get_layer("a").filters == 8 and isinstance(small.get_layer("scaled"), ScaledSum)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(structured.prune_channels(model, ratio=0.0)(x), model(x), atol=1e-6)
