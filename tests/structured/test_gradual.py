"""Gradual channel pruning in fit: masks decided per group, saved with the model, removed by `shrink`."""

import keras
import numpy as np
import pytest

from kopt import convert, distill, quantization, sparsity, structured
from kopt._keras.sublayers import all_sublayers
from kopt.datasets import load_digits
from kopt.structured import ChannelPruneWrapper

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
SCHEDULE = sparsity.PolynomialDecay(0.0, 0.5, 0, 40, frequency=10)


def _cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    a = L.Conv2D(16, 3, padding="same", activation="relu", name="a")(inputs)
    x = L.BatchNormalization(name="bn")(a)
    b = L.Conv2D(16, 3, padding="same", activation="relu", name="b")(x)
    x = L.Add()([x, b])
    c = L.Conv2D(16, 1, activation="relu", name="c")(x)
    x = L.Concatenate()([x, c])
    x = L.Dense(32, activation="relu", name="hidden")(L.Flatten()(L.MaxPooling2D()(x)))
    return keras.Model(inputs, L.Dense(10, name="head")(x))


@pytest.fixture(scope="module")
def digits():
    (x, y), (x_test, y_test) = load_digits()
    return x, y, x_test, y_test


def _fit(model, x, y, epochs):
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    model.fit(x, y, epochs=epochs, batch_size=64, shuffle=False, verbose=0,
              callbacks=[sparsity.UpdatePruningStep()])
    return model


def test_groups_are_masked_as_scheduled_and_shrink_computes_what_the_masked_model_did(digits, tmp_path):
    x, y, x_test, _ = digits
    pruned = _fit(structured.prune_channels_low_magnitude(_cnn(), SCHEDULE, round_to=0), x, y, 3)
    wrappers = {w.layer.name: w for w in pruned.layers if isinstance(w, ChannelPruneWrapper)}
    assert set(wrappers) == {"a", "b", "c", "hidden", "head"}  # head reads pruned channels; its outputs stay
    for name in ("a", "b", "c", "hidden"):
        assert float(np.mean(keras.ops.convert_to_numpy(wrappers[name].output_mask))) == 0.5
    # a and b are one group (the residual Add): the same channels are masked in both.
    np.testing.assert_array_equal(wrappers["a"].output_mask.numpy(), wrappers["b"].output_mask.numpy())
    assert wrappers["head"].output_mask is None and wrappers["head"].input_mask is not None

    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    small = structured.shrink(loaded)
    assert small.get_layer("a").filters == 8 and small.get_layer("c").filters == 8
    assert small.get_layer("hidden").get_weights()[0].shape == (4 * 4 * 16, 16)
    assert not any(isinstance(layer, ChannelPruneWrapper) for layer in all_sublayers(small))
    np.testing.assert_allclose(small.predict(x_test, verbose=0), pruned.predict(x_test, verbose=0), atol=1e-4)
    assert small.count_params() < 0.4 * _cnn().count_params()


def test_training_resumes_from_a_saved_model(digits, tmp_path):
    x, y, _, _ = digits
    straight = _fit(structured.prune_channels_low_magnitude(_cnn(), SCHEDULE), x, y, 2)
    first = _fit(structured.prune_channels_low_magnitude(_cnn(), SCHEDULE), x, y, 1)
    path = tmp_path / "half.keras"
    first.save(path)
    resumed = keras.models.load_model(path)
    resumed.fit(x, y, epochs=1, batch_size=64, shuffle=False, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    for a, b in zip(straight.layers, resumed.layers):
        if isinstance(a, ChannelPruneWrapper):
            assert int(a.pruning_step.numpy()) == int(b.pruning_step.numpy())
            if a.output_mask is not None:
                np.testing.assert_array_equal(a.output_mask.numpy(), b.output_mask.numpy())


def test_fit_without_the_callback_is_refused(digits):
    x, y, _, _ = digits
    pruned = structured.prune_channels_low_magnitude(_cnn(), SCHEDULE)
    pruned.compile("adam", LOSS)
    with pytest.raises(ValueError, match="UpdatePruningStep"):
        pruned.fit(x[:64], y[:64], epochs=1, verbose=0)


def test_it_composes_with_distillation_and_qat_to_int8(digits, tmp_path):
    x, y, x_test, _ = digits
    teacher = _cnn()
    teacher.compile("adam", LOSS)
    teacher.fit(x, y, epochs=2, verbose=0)
    student = structured.prune_channels_low_magnitude(teacher, SCHEDULE)
    distiller = distill.Distiller(teacher, student, teacher_outputs="cache")
    distiller.compile(keras.optimizers.Adam(1e-3), loss=LOSS)
    distiller.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    masks = [w.output_mask.numpy() for w in student.layers if isinstance(w, ChannelPruneWrapper)
             and w.output_mask is not None]
    assert masks and all(m.mean() == 0.5 for m in masks)

    qat = quantization.quantize_model(structured.shrink(distiller.student))
    qat.compile("adam", LOSS)
    qat.fit(x, y, epochs=1, verbose=0)
    convert.to_tflite(qat, tmp_path / "small_int8.tflite", validation_data=x_test)  # validated full int8


def test_bad_input():
    with pytest.raises(ValueError, match="pruning_schedule"):
        structured.prune_channels_low_magnitude(_cnn(), pruning_schedule=0.5)
    with pytest.raises(ValueError, match="l1.*l2"):
        structured.prune_channels_low_magnitude(_cnn(), importance="taylor")
    with pytest.raises(ValueError, match="no ChannelPruneWrapper"):
        structured.shrink(_cnn())


def test_in_a_transformer_block_the_mlp_width_is_masked_and_attention_groups_stay():
    from test_channel_groups import _transformer_block

    model = _transformer_block()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6, 16)).astype("float32"), rng.integers(0, 3, 64)
    pruned = structured.prune_channels_low_magnitude(model, sparsity.ConstantSparsity(0.5, 0), round_to=0)
    wrapped = {w.layer.name: w for w in pruned.layers if isinstance(w, ChannelPruneWrapper)}
    assert set(wrapped) == {"mlp_in", "mlp_out"}  # the residual stream and the heads are read by attention
    _fit(pruned, x, y, 1)
    small = structured.shrink(pruned)
    assert small.get_layer("mlp_in").units == 32 and small.get_layer("mha").num_heads == 4
    np.testing.assert_allclose(small.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-4)
