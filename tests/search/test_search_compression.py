"""The compression space: defaults, validation, keras-tuner hyperparameters and what one trial applies."""

import keras
import keras_tuner
import pytest

from kopt.search import compression as c


def test_defaults_cover_the_issue_space():
    space = c.resolve_compression(None)
    assert space["sparsity"][:2] == (0.0, 0.9)
    assert set(space["quantization"]) == {"int8", "float16", "dynamic", None}
    assert set(space["qat"]) == {True, False}
    assert space["teacher"] is None


@pytest.mark.parametrize("compression, match", [
    ({"sparsity": 1.2}, r"compression\['sparsity'\].*1.2.*\[0, 1\)"),
    ({"sparsity": (0.5, 0.1)}, "low > high"),
    ({"sparsity": [0.0, -0.1]}, "-0.1"),
    ({"quantization": "int4"}, "int4.*'int8', 'int16x8', 'float16', 'dynamic' or None"),
    ({"qat": "yes"}, "True or False"),
    ({"prune_epochs": 0}, "integer >= 1"),
    ({"temperature": 0}, "> 0"),
    ({"quantization": []}, "empty list"),
    ({"prunning": 0.5}, r"unknown keys \['prunning'\]"),
])
def test_bad_values_name_the_key_and_the_fix(compression, match):
    with pytest.raises(ValueError, match=match):
        c.resolve_compression(compression)


def test_teacher_must_be_a_model():
    with pytest.raises(TypeError, match="teacher"):
        c.resolve_compression({"teacher": "resnet"})
    with pytest.raises(TypeError, match="dict"):
        c.resolve_compression([("sparsity", 0.5)])


def _declared(space):
    hp = keras_tuner.HyperParameters()
    c.declare(hp, space)
    return hp


def test_declare_makes_conditional_hyperparameters():
    hp = _declared(c.resolve_compression(None))
    names = {p.name: p for p in hp.space}
    assert names["compression/sparsity"].values == pytest.approx([i / 10 for i in range(10)])  # 0.9 included
    assert set(names["compression/quantization"].values) == {"int8", "float16", "dynamic", "none"}
    qat = names["compression/qat"]
    assert [cond.name for cond in qat.conditions] == ["compression/quantization"]
    assert "compression/distillation" not in names  # no teacher, no distillation
    assert "compression/prune_epochs" not in names  # fixed settings are not hyperparameters


def test_qat_is_inactive_when_the_mode_is_not_int8():
    space = c.resolve_compression({"quantization": ["float16", "int8"]})
    hp = _declared(space)
    hp.values["compression/quantization"] = "float16"
    assert not hp.is_active("compression/qat")
    values = c.trial_compression({"compression/quantization": "float16", "compression/qat": True}, space)
    assert values["qat"] is False and values["quantization"] == "float16"


def test_teacher_adds_distillation_and_temperature():
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    space = c.resolve_compression({"teacher": teacher, "temperature": [2.0, 4.0]})
    names = {p.name for p in _declared(space).space}
    assert {"compression/distillation", "compression/temperature"} <= names
    values = c.trial_compression({"compression/distillation": True, "compression/temperature": 2.0,
                                  "compression/quantization": "none", "compression/sparsity": 0.5}, space)
    assert values == {"sparsity": 0.5, "channels": 0.0, "quantization": None, "qat": False, "distillation": True,
                      "temperature": 2.0, "prune_epochs": 2, "qat_epochs": 1}
    assert c.label(values) == "50% sparse, float32, distilled T=2"


def test_fixed_values_need_no_hyperparameter_values():
    space = c.resolve_compression({"sparsity": 0.8, "quantization": "int8", "qat": True})
    values = c.trial_compression({}, space)
    assert (values["sparsity"], values["quantization"]) == (0.8, "int8")


def test_numbers_and_ranges_as_users_write_them():
    space = c.resolve_compression({"sparsity": [0, 0.5], "temperature": 2})
    hp = _declared(space)
    assert hp.space[0].values == [0.0, 0.5]
    with pytest.raises(ValueError, match="step > 0"):
        c.resolve_compression({"sparsity": (0.0, 0.5, 0)})


def test_validation_datasets_batched_or_not():
    import numpy as np
    import tensorflow as tf

    x = np.random.rand(10, 3).astype("float32")
    one_hot = np.eye(4, dtype="float32")[np.arange(10) % 4]
    for dataset in (tf.data.Dataset.from_tensor_slices((x, one_hot)),
                    tf.data.Dataset.from_tensor_slices((x, one_hot)).batch(4)):
        got_x, got_y = c.as_arrays(dataset, "validation_data")
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, one_hot)
