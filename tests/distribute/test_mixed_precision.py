"""Mixed precision: the policy by hardware, kopt's state in float32, float32 export, validated in LiteRT."""

import keras
import numpy as np
import pytest
from litert_truth import only_output

import kopt
from kopt._keras.precision import as_float32
from kopt.distribute import mixed_precision


@pytest.fixture(autouse=True)
def _float32_after():
    yield
    keras.config.set_dtype_policy("float32")


def test_auto_policy_by_hardware(monkeypatch):
    assert kopt.distribute.set_mixed_precision("auto") == "float32"  # this machine: CPU only
    for hardware, policy in (("TPU", "mixed_bfloat16"), ("GPU", "mixed_float16")):
        monkeypatch.setattr(mixed_precision, "_hardware", lambda h=hardware: h)
        assert kopt.distribute.set_mixed_precision("auto") == policy
        assert keras.config.dtype_policy().name == policy


def test_bad_policies(monkeypatch):
    with pytest.raises(ValueError, match="`policy` must be one of"):
        kopt.distribute.set_mixed_precision("mixed_int4")
    monkeypatch.setattr(mixed_precision, "_hardware", lambda: "TPU")
    with pytest.raises(ValueError, match="TPUs compute in bfloat16"):
        kopt.distribute.set_mixed_precision("mixed_float16")


def test_prune_qat_and_int8_export_under_mixed_bfloat16():
    kopt.distribute.set_mixed_precision("mixed_bfloat16")
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 8, 8, 1)).astype("float32"), rng.integers(0, 10, 128)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pruned = kopt.sparsity.prune_low_magnitude(kopt.demo.build_cnn(),
                                               pruning_schedule=kopt.sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("adam", loss)
    pruned.fit(x, y, epochs=1, verbose=0, callbacks=[kopt.sparsity.UpdatePruningStep()])
    wrappers = [layer for layer in pruned.layers if isinstance(layer, kopt.sparsity.PruneLowMagnitude)]
    assert pruned(x[:2]).dtype.name == "bfloat16"  # the policy is really in effect
    assert {m.dtype for w in wrappers for m in w.masks} == {"float32"}
    assert all(np.mean(m.numpy() == 0) == pytest.approx(0.5, abs=0.01) for w in wrappers for m in w.masks)

    qat = kopt.quantization.quantize_model(kopt.sparsity.strip_pruning(pruned))
    qat.compile("adam", loss)
    qat.fit(x, y, epochs=1, verbose=0)
    ranges = [w for w in qat.weights if w.path.endswith(("_min", "_max"))]
    assert ranges and {w.dtype for w in ranges} == {"float32"}
    content = kopt.convert.to_tflite(qat, quantization="int8", validation_data=x)
    # The file (run in LiteRT) agrees with the model as trained, in bfloat16, on nearly every sample.
    agreement = np.mean(only_output(content, x).argmax(-1) == qat.predict(x, verbose=0).argmax(-1))
    assert agreement >= 0.9


def test_as_float32_keeps_weights_and_float_models():
    model = kopt.demo.build_cnn()
    assert as_float32(model) is model
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = kopt.quantization.quantize_model(kopt.demo.build_cnn())
    copy = as_float32(mixed)
    assert {layer.dtype_policy.compute_dtype for layer in copy.layers} == {"float32"}
    for a, b in zip(mixed.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_distillation_loss_is_float32_under_mixed_precision():
    kopt.distribute.set_mixed_precision("mixed_bfloat16")
    rng = np.random.default_rng(1)
    x, y = rng.random((64, 8)).astype("float32"), rng.integers(0, 3, 64)
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller = kopt.distill.Distiller(teacher, student)
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = distiller.fit(x, y, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert student(x[:2]).dtype.name == "bfloat16"
    # The loss itself is computed in float32 from the bfloat16 logits.
    loss = kopt.distill.LogitsDistillation(temperature=4.0).compute_loss(teacher(x), student(x))
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"
