"""prune_low_magnitude / strip_pruning / get_sparsity on every supported layer and model kind."""

import json
import logging

import keras
import numpy as np
import pytest
from keras import layers, ops

from kopt import sparsity

L = layers
ONE_SHOT = sparsity.ConstantSparsity(0.5, 0, frequency=1)


def _fit(model, x, y, steps=3):
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    model.fit(x, y, batch_size=len(x) // steps, epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])


LAYER_CASES = {
    "Dense": ((12,), lambda: L.Dense(8), ["kernel"]),
    "EinsumDense": ((5, 12), lambda: L.EinsumDense("abc,cd->abd", output_shape=(5, 8), bias_axes="d"), ["kernel"]),
    "Conv1D": ((10, 4), lambda: L.Conv1D(8, 3), ["kernel"]),
    "Conv2D": ((8, 8, 3), lambda: L.Conv2D(8, 3), ["kernel"]),
    "Conv3D": ((5, 5, 5, 2), lambda: L.Conv3D(4, 2), ["kernel"]),
    "Conv2DTranspose": ((6, 6, 3), lambda: L.Conv2DTranspose(4, 3), ["kernel"]),
    "DepthwiseConv1D": ((10, 6), lambda: L.DepthwiseConv1D(3, depth_multiplier=2), ["kernel"]),
    "DepthwiseConv2D": ((8, 8, 6), lambda: L.DepthwiseConv2D(3, depth_multiplier=2), ["kernel"]),
    "SeparableConv1D": ((10, 6), lambda: L.SeparableConv1D(8, 3), ["pointwise_kernel"]),
    "SeparableConv2D": ((8, 8, 6), lambda: L.SeparableConv2D(8, 3), ["pointwise_kernel"]),
    "LSTM": ((7, 6), lambda: L.LSTM(8), ["lstm_cell/kernel", "lstm_cell/recurrent_kernel"]),
    "GRU": ((7, 6), lambda: L.GRU(8), ["gru_cell/kernel", "gru_cell/recurrent_kernel"]),
    "SimpleRNN": ((7, 6), lambda: L.SimpleRNN(8), ["simple_rnn_cell/kernel", "simple_rnn_cell/recurrent_kernel"]),
}
OPT_IN = {"DepthwiseConv1D", "DepthwiseConv2D"}  # left dense by default, as in tfmot


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_each_supported_layer_reaches_target_sparsity(name):
    input_shape, factory, weights = LAYER_CASES[name]
    inputs = keras.Input(input_shape)
    layer = factory()
    model = keras.Model(inputs, L.Flatten()(layer(inputs)))
    before = [w.copy() for w in model.get_weights()]
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=ONE_SHOT, prune_depthwise=name in OPT_IN)
    x = np.random.rand(24, *input_shape).astype("float32")
    _fit(pruned, x, np.random.rand(24, model.output.shape[-1]).astype("float32"))
    stats = sparsity.get_sparsity(sparsity.strip_pruning(pruned))
    assert sorted(stats) == sorted(f"{layer.name}/{w}" for w in weights)
    for value in stats.values():
        assert abs(value - 0.5) < 0.02
    # The original model was copied, not modified.
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_embedding_and_multi_head_attention():
    tokens = keras.Input((6,), dtype="int32")
    x = L.Embedding(50, 16, name="embed")(tokens)
    x = L.MultiHeadAttention(num_heads=2, key_dim=8, name="mha")(x, x)
    model = keras.Model(tokens, L.GlobalAveragePooling1D()(x))
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.75, 0, frequency=1))
    _fit(pruned, np.random.randint(0, 50, (24, 6)), np.random.rand(24, 16).astype("float32"))
    stats = sparsity.get_sparsity(pruned)
    assert set(stats) == {"embed/embeddings"} | {f"mha/{p}/kernel" for p in ("query", "key", "value", "attention_output")}
    assert all(abs(v - 0.75) < 0.01 for v in stats.values()), stats
    stripped = sparsity.strip_pruning(pruned)
    assert sparsity.get_sparsity(stripped) == pytest.approx(stats)
    x = np.random.randint(0, 50, (4, 6))
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)


def test_nested_models_are_pruned_recursively():
    inner = keras.Sequential([keras.Input((16,)), L.Dense(16, activation="relu", name="inner_dense")], name="block")
    deeper = keras.Sequential([keras.Input((16,)), inner, L.Dense(8, name="mid_dense")], name="outer_block")
    inputs = keras.Input((10,))
    outputs = L.Dense(4, name="head")(deeper(L.Dense(16, name="stem")(inputs)))
    model = keras.Model(inputs, outputs)
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=ONE_SHOT)
    wrapped = {layer.layer.name for layer in sparsity.callbacks.collect_pruned_layers(pruned)}
    assert wrapped == {"stem", "inner_dense", "mid_dense", "head"}
    _fit(pruned, np.random.rand(24, 10).astype("float32"), np.random.rand(24, 4).astype("float32"))
    stripped = sparsity.strip_pruning(pruned)
    stats = sparsity.get_sparsity(stripped)
    assert set(stats) == {f"{n}/kernel" for n in wrapped} and all(abs(v - 0.5) < 0.02 for v in stats.values())
    assert [layer.name for layer in stripped.layers] == [layer.name for layer in model.layers]
    x = np.random.rand(5, 10).astype("float32")
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-5)


def test_shared_layer_stays_shared():
    shared = L.Dense(8, name="shared")
    a, b = keras.Input((8,)), keras.Input((8,))
    model = keras.Model([a, b], L.Add()([shared(a), shared(b)]))
    pruned = sparsity.prune_low_magnitude(model)
    assert len(sparsity.callbacks.collect_pruned_layers(pruned)) == 1


def test_unprunable_layers_are_kept_and_named_in_one_log_line(caplog):
    model = keras.Sequential([
        keras.Input((8, 8, 3)), L.Conv2D(4, 3), L.BatchNormalization(name="bn"), L.ReLU(),
        L.Reshape((36, 4)), L.Bidirectional(L.LSTM(3), name="bi"), L.Dense(2),
    ])
    with caplog.at_level(logging.INFO, logger="kopt"):
        pruned = sparsity.prune_low_magnitude(model)
    lines = [r.getMessage() for r in caplog.records if r.name == "kopt"]
    assert len(lines) == 1 and "bn (BatchNormalization)" in lines[0] and "bi (Bidirectional)" in lines[0]
    assert "re_lu" not in lines[0]  # weightless layers are not worth naming
    kinds = [type(layer).__name__ for layer in pruned.layers]
    assert kinds == ["PruneLowMagnitude", "BatchNormalization", "ReLU", "Reshape", "Bidirectional",
                     "PruneLowMagnitude"]


def test_list_of_layers_and_single_layer():
    dense, conv = L.Dense(4), L.Conv2D(2, 3)
    wrapped = sparsity.prune_low_magnitude([dense, conv])
    assert [w.layer for w in wrapped] == [dense, conv]
    single = sparsity.prune_low_magnitude(L.Dense(4, name="d"), name="custom_name")
    assert single.name == "custom_name"
    model = keras.Sequential([
        keras.Input((6,)), sparsity.prune_low_magnitude(L.Dense(4, name="p"), pruning_schedule=ONE_SHOT), L.Dense(2, name="q")
    ])
    _fit(model, np.random.rand(12, 6).astype("float32"), np.random.rand(12, 2).astype("float32"))
    assert sparsity.get_sparsity(model) == {"p/kernel": 0.5, "q/kernel": 0.0}


class ScaledDense(L.Dense, sparsity.PrunableLayer):
    def get_prunable_weights(self):
        return [self.kernel]


def test_custom_prunable_layer():
    model = keras.Sequential([keras.Input((10,)), ScaledDense(6, name="custom")])
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.8, 0, frequency=1))
    assert isinstance(pruned.layers[0], sparsity.PruneLowMagnitude)
    _fit(pruned, np.random.rand(12, 10).astype("float32"), np.random.rand(12, 6).astype("float32"))
    assert sparsity.get_sparsity(pruned)["custom/kernel"] == pytest.approx(0.8, abs=0.02)


def test_strip_pruning_leaves_no_kopt_class():
    model = keras.Sequential([keras.Input((6,)), L.Dense(8), L.Dense(2)])
    pruned = sparsity.prune_low_magnitude(model)
    assert "kopt" in json.dumps(pruned.get_config())
    stripped = sparsity.strip_pruning(pruned)
    assert "kopt" not in json.dumps(stripped.get_config())
    assert [type(layer) for layer in stripped.layers] == [L.Dense, L.Dense]


def test_training_without_the_callback_says_to_add_it():
    pruned = sparsity.prune_low_magnitude(keras.Sequential([keras.Input((4,)), L.Dense(2)]))
    pruned.compile("sgd", "mse")
    with pytest.raises(ValueError, match="UpdatePruningStep"):
        pruned.fit(np.zeros((4, 4)), np.zeros((4, 2)), verbose=0)
    # Inference needs no callback.
    assert pruned.predict(np.zeros((2, 4)), verbose=0).shape == (2, 2)


def test_pruned_weights_get_no_gradient_and_stay_zero_through_epochs():
    model = keras.Sequential([keras.Input((10,)), L.Dense(10, name="d")])
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.6, 0, end_step=1, frequency=1))
    pruned.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    x, y = np.random.rand(40, 10).astype("float32"), np.random.rand(40, 10).astype("float32")
    pruned.fit(x, y, batch_size=10, epochs=3, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    mask = ops.convert_to_numpy(pruned.layers[0].masks[0])
    kernel = ops.convert_to_numpy(pruned.layers[0].layer.kernel)
    assert mask.mean() == pytest.approx(0.4)
    assert np.all(kernel[mask == 0] == 0)  # written at epoch end, never revived by momentum


# ---------------------------------------------------------------- bad input


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = L.Dense(2)

    def call(self, x):
        return self.dense(x)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sparsity.prune_low_magnitude("model"), "to_prune"),
        (lambda: sparsity.prune_low_magnitude(np.zeros(3)), "to_prune"),
        (lambda: sparsity.prune_low_magnitude(Subclassed()), "to_prune.*no recorded input shape.*call it once"),
        (lambda: sparsity.prune_low_magnitude(L.Bidirectional(L.LSTM(3))), "PrunableLayer"),
        (lambda: sparsity.prune_low_magnitude(L.ConvLSTM1D(2, 3)), "PrunableLayer"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), prune_depthwise="yes"), "prune_depthwise"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), ONE_SHOT, (1, 1), "AVG", object()), "pruning_policy"),
        (lambda: sparsity.prune_low_magnitude(L.BatchNormalization()), "PrunableLayer"),
        (lambda: sparsity.prune_low_magnitude(sparsity.prune_low_magnitude(L.Dense(2))), "already pruned"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), pruning_schedule=0.5), "pruning_schedule"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), block_pooling_type="MIN"), "block_pooling_type"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), block_size=(0, 2)), "block_size"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), block_size=4), "block_size"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), sparsity_m_by_n=(4, 4)), "sparsity_m_by_n"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), sparsity_m_by_n=(3, 2)), "sparsity_m_by_n"),
        (lambda: sparsity.prune_low_magnitude(L.Dense(2), sparsity_m_by_n=(2, 4), block_size=(2, 2)), "cannot be combined"),
        (lambda: sparsity.strip_pruning(L.Dense(2)), "keras.Model"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "layer, input_shape, kwargs, match",
    [
        (L.Conv2D(4, 3), (8, 8, 3), {"block_size": (2, 2)}, "rank-2"),
        (L.Dense(8), (10,), {"sparsity_m_by_n": (2, 4)}, "multiple of 4"),
        (L.Conv1D(8, 3), (10, 4), {"sparsity_m_by_n": (2, 4)}, "rank-2"),
    ],
)
def test_weight_shape_that_does_not_allow_the_structure(layer, input_shape, kwargs, match):
    model = keras.Sequential([keras.Input(input_shape), layer])
    with pytest.raises(ValueError, match=match):
        sparsity.prune_low_magnitude(model, **kwargs)


def test_unbuilt_sequential_model():
    model = keras.Sequential([L.Dense(8, name="a"), L.Dense(3, name="b")])  # no Input: built in fit
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=ONE_SHOT)
    _fit(pruned, np.random.rand(24, 12).astype("float32"), np.random.rand(24, 3).astype("float32"))
    assert sparsity.get_sparsity(pruned) == {"a/kernel": 0.5, "b/kernel": 0.5}
    assert int(ops.convert_to_numpy(pruned.layers[0].pruning_step)) == 3  # counted from 0 like a built model


def test_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input((12,)), L.Dense(8, name="a"), L.Dense(3, name="b", dtype="float32")])
        pruned = sparsity.prune_low_magnitude(model, pruning_schedule=ONE_SHOT)
        assert pruned.layers[0].masks[0].dtype == "float32"  # masks follow the variable dtype
        _fit(pruned, np.random.rand(24, 12).astype("float32"), np.random.rand(24, 3).astype("float32"))
        assert sparsity.get_sparsity(pruned) == {"a/kernel": 0.5, "b/kernel": 0.5}
        x = np.random.rand(8, 12).astype("float32")
        stripped = sparsity.strip_pruning(pruned)
        np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=5e-3)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_model_with_an_already_pruned_layer_keeps_its_masks():
    pruned_layer = sparsity.prune_low_magnitude(L.Dense(6, name="done"), pruning_schedule=ONE_SHOT)
    model = keras.Sequential([keras.Input((10,)), pruned_layer, L.Dense(2, name="todo")])
    _fit(model, np.random.rand(24, 10).astype("float32"), np.random.rand(24, 2).astype("float32"))
    again = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.9, 0, frequency=1))
    assert [type(layer).__name__ for layer in again.layers] == ["PruneLowMagnitude", "PruneLowMagnitude"]
    kept = again.layers[0]
    assert kept is not pruned_layer and kept.pruning_schedule == ONE_SHOT
    np.testing.assert_array_equal(ops.convert_to_numpy(kept.masks[0]), ops.convert_to_numpy(pruned_layer.masks[0]))
    assert int(ops.convert_to_numpy(kept.pruning_step)) == 3
