"""The compression space: defaults, validation, keras-tuner hyperparameters and what one trial applies."""

import keras
import keras_tuner
import numpy as np
import pytest

from kopt.search import compression as c


def _default_choices():
    """What the tuner tries by default: the values of the hyperparameters the default space declares."""
    space = c.resolve_compression(None)
    return space, {p.name.removeprefix(c.PREFIX): p.values for p in _declared(space).space if hasattr(p, "values")}


def _small_data():
    rng = np.random.default_rng(0)
    x = rng.random((96, 8)).astype("float32")
    return x, (x[:, 0] * 3).astype("int32").clip(0, 2)


def _small_model():
    # 2,048 weights in the first kernel: dynamic-range quantization leaves kernels under 1,024 weights in float.
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(3)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def test_every_default_sparsity_is_reached_within_the_default_pruning_epochs():
    from kopt import recipe, sparsity

    space, choices = _default_choices()
    assert choices["sparsity"][0] == 0 and len(choices["sparsity"]) > 2  # dense is a candidate, then a range
    x, y = _small_data()
    model = _small_model()
    model.fit(x, y, epochs=1, verbose=0)
    for target in choices["sparsity"][1:]:
        stripped = recipe.prune(model, x, y, sparsity=target, epochs=space["prune_epochs"], batch_size=32)
        reached = sparsity.get_sparsity(stripped)
        assert all(v == pytest.approx(target, abs=0.01) for v in reached.values()), (target, reached)
    assert not any(v > 0.05 for v in sparsity.get_sparsity(model).values())  # sparsity 0: the model as trained


def test_every_default_quantization_makes_the_file_it_names():
    from kopt import convert, recipe

    space, choices = _default_choices()
    assert space["teacher"] is None and "distillation" not in choices  # no teacher: nothing to distill from
    x, y = _small_data()
    model = _small_model()
    model.fit(x, y, epochs=1, verbose=0)
    weight_types = {}
    for mode in choices["quantization"]:
        mode = None if mode == c.NO_QUANTIZATION else mode
        info = convert.inspect(convert.to_tflite(model, quantization=mode, representative_data=x, validation_data=x))
        kernels = [t for t in info.tensors if t["constant"] and len(t["shape"]) == 2]
        weight_types[mode] = max(kernels, key=lambda t: np.prod(t["shape"]))["dtype"]  # the (256, 8) kernel
        assert info.is_full_integer == (mode == "int8"), mode
        assert info.inputs[0]["dtype"] == ("int8" if mode == "int8" else "float32"), mode
    assert weight_types == {"int8": "int8", "float16": "float16", "dynamic": "int8", None: "float32"}
    # int8 both ways, the qat choice: calibrated above, or fine-tuned quantization-aware (default epochs) here.
    assert set(choices["qat"]) == {True, False}
    qat = recipe.quantize_aware(model, x, y, epochs=space["qat_epochs"])
    assert convert.inspect(convert.to_tflite(qat, validation_data=x)).is_full_integer


@pytest.mark.parametrize("compression, match", [
    ({"sparsity": 1.2}, r"compression\['sparsity'\].*1.2.*\[0, 1\)"),
    ({"sparsity": (0.5, 0.1)}, "low > high"),
    ({"sparsity": [0.0, -0.1]}, "-0.1"),
    ({"quantization": "int4"}, "int4.*'int8', 'int16x8', 'float16', 'dynamic' or None"),
    ({"qat": "yes"}, "True or False"),
    ({"prune_epochs": 0}, "integer >= 1"),
    ({"clusters": [0, 2]}, r"compression\['clusters'\].*2.*integer >= 3"),
    ({"clusters": 16.0}, "0 \\(no clustering\\)"),
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
    assert values == {"sparsity": 0.5, "channels": 0.0, "clusters": 0, "quantization": None, "qat": False,
                      "float_layers": 0,
                      "distillation": True, "temperature": 2.0, "prune_epochs": 2, "qat_epochs": 1}
    assert c.label(values) == "50% sparse, float32, distilled T=2"


def test_clusters_are_searched_only_when_asked():
    assert "compression/clusters" not in {p.name for p in _declared(c.resolve_compression(None)).space}
    space = c.resolve_compression({"clusters": [0, 16, 32]})
    (declared,) = [p for p in _declared(space).space if p.name == "compression/clusters"]
    assert declared.values == [0, 16, 32]
    values = c.trial_compression({"compression/clusters": 16, "compression/sparsity": 0.5,
                                  "compression/quantization": "int8", "compression/qat": True}, space)
    assert values["clusters"] == 16 and c.label(values) == "50% sparse, 16 clusters, int8 QAT"


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


def test_float_layers_is_searched_only_for_int8():
    space = c.resolve_compression({"quantization": ["float16", "int8"], "float_layers": [0, 2]})
    hp = _declared(space)
    hp.values["compression/quantization"] = "float16"
    assert not hp.is_active("compression/float_layers")
    hp.values["compression/quantization"] = "int8"
    assert hp.is_active("compression/float_layers")
    values = c.trial_compression({"compression/quantization": "int8", "compression/qat": False,
                                  "compression/float_layers": 2}, space)
    assert values["float_layers"] == 2 and c.label(values).endswith("int8 PTQ, 2 layers float")
    assert c.trial_compression({"compression/quantization": "float16", "compression/float_layers": 2},
                               space)["float_layers"] == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"compression\['float_layers'\]"):
            c.resolve_compression({"float_layers": bad})
