"""`PruningPolicy` / `PruneForLatencyOnXNNPack` against tfmot's (run on tf_keras in its own process).

The same architectures are built in Keras 3 and tf_keras (tests/oracle/tfmot_policy_oracle.py): the layers the
policy allows and the layers `prune_low_magnitude(model, pruning_policy=...)` wraps are the same names, models
that do not qualify raise in both with tfmot's message, and after a short fit the 1x1 convolutions reach the
target sparsity while the 3x3 stem, the depthwise convolutions and the Dense layer stay dense, in both.
Then kopt's own choices: nested models, custom layers, channels_first, bad arguments.
"""

import keras
import numpy as np
import pytest

from kopt import sparsity
from kopt._keras.clone import walk_layers
from kopt.sparsity import PruneForLatencyOnXNNPack, PruneLowMagnitude, PruningPolicy
from tests.oracle import tfmot_policy_oracle as oracle

L = keras.layers


@pytest.fixture(scope="module")
def tfmot(tmp_path_factory):
    return oracle.run([*oracle.POSITIVE, *oracle.NOT_QUALIFYING, "fit"], tmp_path_factory.mktemp("tfmot_policy"))


def _wrapped(model):
    return sorted(layer.layer.name for layer in walk_layers(model) if isinstance(layer, PruneLowMagnitude))


def _allowed(model):
    policy = PruneForLatencyOnXNNPack()
    return sorted({layer.name for layer in walk_layers(model) if policy.allow_pruning(layer)})


def _stem(inputs, padding="valid"):
    return L.Conv2D(8, 3, strides=2, padding=padding, name="stem")(L.ZeroPadding2D(1, name="stem_pad")(inputs))


@pytest.mark.parametrize("kind", oracle.POSITIVE)
def test_wraps_the_same_layers_as_tfmot(tfmot, kind):
    model = oracle.build(keras, kind)
    pruned = sparsity.prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())
    assert "error" not in tfmot[kind], tfmot[kind]
    assert _wrapped(pruned) == tfmot[kind]["wrapped"]
    assert len(_wrapped(pruned)) >= 2
    inner = [layer.layer for layer in walk_layers(pruned) if isinstance(layer, PruneLowMagnitude)]
    assert all(isinstance(layer, L.Conv2D) and layer.kernel_size == (1, 1) for layer in inner)


@pytest.mark.parametrize("kind", oracle.POSITIVE + oracle.NOT_QUALIFYING)
def test_allows_the_same_layers_as_tfmot(tfmot, kind):
    assert _allowed(oracle.build(keras, kind)) == tfmot[kind]["allowed"]


def test_mobilenet_v2_has_the_1x1_convolutions_tfmot_would_prune(tfmot):
    allowed = tfmot["mobilenet_v2"]["allowed"]
    assert len(allowed) == 34 and "Conv_1" in allowed and "block_16_project" in allowed  # 16 expand, 17 project, head
    assert _allowed(oracle.build(keras, "mobilenet_v2")) == allowed


@pytest.mark.parametrize("kind", oracle.NOT_QUALIFYING)
def test_models_that_do_not_qualify_raise_as_in_tfmot(tfmot, kind):
    assert tfmot[kind]["error"][0] == "ValueError"
    model = oracle.build(keras, kind)
    with pytest.raises(ValueError) as error:
        sparsity.prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())
    message = str(error.value)
    assert message.startswith(tfmot[kind]["error"][1])  # tfmot's message, then what to do about it
    if kind != "unbuilt":  # whose fix is to build the model
        assert "pass pruning_policy=None" in message


def test_mobilenet_v2_does_not_qualify_but_prunes_without_a_policy():
    """keras.applications' MobileNetV2 has a padding='same' stem, which XNNPACK's sparse subgraph cannot start at."""
    model = oracle.build(keras, "mobilenet_v2")
    assert model.get_layer("Conv1").padding == "same"
    pruned = sparsity.prune_low_magnitude(model)
    assert "Conv1" in _wrapped(pruned)


def test_the_pruned_1x1_convolutions_reach_the_target_and_the_rest_stays_dense(tfmot):
    keras.utils.set_random_seed(oracle.FIT["seed"])
    pruned = sparsity.prune_low_magnitude(
        oracle.build(keras, "guide"), pruning_policy=PruneForLatencyOnXNNPack(),
        pruning_schedule=sparsity.ConstantSparsity(oracle.FIT["target"], 0, frequency=1))
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = oracle.fit_data()
    pruned.fit(x, y, batch_size=oracle.FIT["batch_size"], epochs=1, verbose=0,
               callbacks=[sparsity.UpdatePruningStep()])
    zeros = oracle.zero_fractions(sparsity.strip_pruning(pruned))
    assert zeros == pytest.approx(tfmot["fit"]["zeros"], abs=1e-6)
    assert zeros["block1_pw"] == pytest.approx(0.75) and zeros["block2_pw"] == pytest.approx(0.75)
    assert zeros["stem"] == zeros["block1_dw"] == zeros["block2_dw"] == zeros["classifier"] == 0.0


def test_nested_models_are_checked_inside_and_their_1x1_convolutions_pruned():
    backbone = oracle.build(keras, "inverted_residual")
    outer = keras.Sequential([keras.Input((32, 32, 3)), backbone, L.Dense(3, name="outer_dense")])
    pruned = sparsity.prune_low_magnitude(outer, pruning_policy=PruneForLatencyOnXNNPack())
    alone = sparsity.prune_low_magnitude(backbone, pruning_policy=PruneForLatencyOnXNNPack())
    assert _wrapped(pruned) == _wrapped(alone) and len(_wrapped(alone)) == 10
    assert "outer_dense" not in _wrapped(pruned)

    inputs = keras.Input((32, 32, 3))
    block = keras.Sequential([keras.Input((16, 16, 8)), L.MaxPooling2D(name="hidden_max_pool"), L.Conv2D(8, 1)])
    x = L.GlobalAveragePooling2D(keepdims=True)(block(_stem(inputs)))
    with pytest.raises(ValueError, match="Layer MaxPooling2D is not supported.*'hidden_max_pool'"):
        sparsity.prune_low_magnitude(keras.Model(inputs, x), pruning_policy=PruneForLatencyOnXNNPack())


class Pointwise(L.Layer):
    """A custom layer holding a 1x1 Conv2D as an attribute."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(8, 1)

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(x)


def test_custom_layers_are_unsupported_inside_and_never_wrapped():
    inputs = keras.Input((32, 32, 3))
    x = L.GlobalAveragePooling2D(keepdims=True)(Pointwise(name="custom")(_stem(inputs)))
    with pytest.raises(ValueError, match="Layer Pointwise is not supported.*'custom'"):
        sparsity.prune_low_magnitude(keras.Model(inputs, x), pruning_policy=PruneForLatencyOnXNNPack())

    x = L.GlobalAveragePooling2D(keepdims=True)(L.Conv2D(8, 1, name="pw")(_stem(inputs)))
    model = keras.Model(inputs, Pointwise(name="custom_head")(x))
    pruned = sparsity.prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())
    assert _wrapped(pruned) == ["pw"]  # without a policy the custom layer would be wrapped too
    assert "custom_head" in _wrapped(sparsity.prune_low_magnitude(model))


def test_keras3_operations_and_identity_are_supported():
    inputs = keras.Input((32, 32, 3))
    x = _stem(inputs)
    y = L.Identity()(L.Conv2D(8, 1, name="pw")(x))
    x = keras.ops.multiply(x - y, x + y)
    model = keras.Model(inputs, L.GlobalAveragePooling2D(keepdims=True)(x))
    pruned = sparsity.prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())
    assert _wrapped(pruned) == ["pw"]
    np.testing.assert_allclose(pruned(np.ones((1, 32, 32, 3))), model(np.ones((1, 32, 32, 3))), atol=1e-6)

    z = L.Activation(lambda t: 2 * t, name="doubled")(_stem(inputs))
    model = keras.Model(inputs, L.GlobalAveragePooling2D(keepdims=True)(z))
    with pytest.raises(ValueError, match="Layer Activation is not supported"):
        sparsity.prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())

    z = keras.ops.maximum(_stem(inputs), 0.0)
    model = keras.Model(inputs, L.GlobalAveragePooling2D(keepdims=True)(z))
    with pytest.raises(ValueError, match="Layer Maximum is not supported"):
        sparsity.prune_low_magnitude(model, pruning_policy=PruneForLatencyOnXNNPack())


def test_channels_first_does_not_qualify():
    inputs = keras.Input((3, 32, 32))
    x = L.ZeroPadding2D(1, data_format="channels_first")(inputs)
    x = L.Conv2D(8, 3, strides=2, padding="valid", data_format="channels_first")(x)
    x = L.Conv2D(8, 1, data_format="channels_first")(x)
    x = L.GlobalAveragePooling2D(keepdims=True, data_format="channels_first")(x)
    with pytest.raises(ValueError, match="Could not find `Conv2D 3x3`.*channels-last"):
        sparsity.prune_low_magnitude(keras.Model(inputs, x), pruning_policy=PruneForLatencyOnXNNPack())


def test_already_wrapped_layers_stay_wrapped():
    inputs = keras.Input((32, 32, 3))
    x = L.GlobalAveragePooling2D(keepdims=True)(L.Conv2D(8, 1, name="pw")(_stem(inputs)))
    outputs = sparsity.prune_low_magnitude(L.Dense(2, name="dense"))(L.Flatten()(x))
    pruned = sparsity.prune_low_magnitude(keras.Model(inputs, outputs), pruning_policy=PruneForLatencyOnXNNPack())
    assert _wrapped(pruned) == ["dense", "pw"]  # as in tfmot: a wrapper is kept, whatever the policy


def test_a_layer_or_a_list_ignores_the_policy_as_in_tfmot():
    policy = PruneForLatencyOnXNNPack()
    assert isinstance(sparsity.prune_low_magnitude(L.Conv2D(4, 3), pruning_policy=policy), PruneLowMagnitude)
    wrapped = sparsity.prune_low_magnitude([L.Dense(2), L.Conv2D(4, 1)], pruning_policy=policy)
    assert [type(layer) for layer in wrapped] == [PruneLowMagnitude] * 2


def test_custom_policy_is_asked_about_every_layer():
    asked, checked = [], []

    class DenseOnly(PruningPolicy):
        def allow_pruning(self, layer):
            asked.append(layer.name)
            return isinstance(layer, L.Dense)

        def ensure_model_supports_pruning(self, model):
            checked.append(model.name)

    inner = keras.Sequential([keras.Input((4,)), L.Dense(4, name="inner_dense")], name="inner")
    model = keras.Sequential([keras.Input((4,)), inner, L.Dense(2, name="outer_dense"), L.Dropout(0.1)], name="m")
    pruned = sparsity.prune_low_magnitude(model, pruning_policy=DenseOnly())
    assert checked == ["m"]
    assert set(asked) >= {"inner_dense", "outer_dense"}
    assert _wrapped(pruned) == ["inner_dense", "outer_dense"]

    with pytest.raises(TypeError):
        PruningPolicy()


class _TfmotLookalike:
    pass


_TfmotLookalike.__module__ = "tensorflow_model_optimization.python.core.sparsity.keras.pruning_policy"


@pytest.mark.parametrize(
    "policy, fix",
    [
        (object(), "kopt.sparsity.PruningPolicy"),
        (PruneForLatencyOnXNNPack, r"pruning_policy=PruneForLatencyOnXNNPack\(\)"),
        (_TfmotLookalike(), "tf_keras layers only"),
        ("xnnpack", "PruneForLatencyOnXNNPack"),
    ],
)
def test_bad_pruning_policy_names_the_argument_and_the_fix(policy, fix):
    model = oracle.build(keras, "guide")
    with pytest.raises(ValueError, match=f"`pruning_policy` must be.*{fix}"):
        sparsity.prune_low_magnitude(model, pruning_policy=policy)


def test_model_argument_must_be_a_model():
    with pytest.raises(ValueError, match="`model` must be a keras.Model"):
        PruneForLatencyOnXNNPack().ensure_model_supports_pruning(L.Dense(2))
