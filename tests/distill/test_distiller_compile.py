"""kopt.distill.Distiller: the keras.io example's compile arguments, and the one `loss` figure it logs."""

import keras
import numpy as np
import pytest

from kopt import distill
from tests.distill.test_distill_losses import hinton
from tests.distill.test_distiller import CE, X, Y, _np_ce, _student, _teacher


def _np_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def keras_io_loss(teacher_logits, student_logits, labels, alpha, temperature):
    """The keras.io "Knowledge Distillation" example's loss, in NumPy:
    `alpha * student_loss_fn(y, s) + (1 - alpha) * KLDivergence()(softmax(t/T), softmax(s/T)) * T**2`, with
    `keras.losses.KLDivergence`'s clipping of both distributions to [1e-7, 1] and mean over the batch."""
    p = np.clip(_np_softmax(teacher_logits / temperature), 1e-7, 1)
    q = np.clip(_np_softmax(student_logits / temperature), 1e-7, 1)
    distillation = np.mean(np.sum(p * np.log(p / q), axis=-1)) * temperature**2
    return alpha * np.mean(_np_ce(student_logits, labels)) + (1 - alpha) * distillation


def _logits(distiller):
    return (keras.ops.convert_to_numpy(distiller.teacher(X)).astype("float64"),
            keras.ops.convert_to_numpy(distiller.student(X)).astype("float64"))


def _keras_io_compile(distiller, **overrides):
    arguments = dict(optimizer=keras.optimizers.Adam(), metrics=[keras.metrics.SparseCategoricalAccuracy()],
                     student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                     distillation_loss_fn=keras.losses.KLDivergence(), alpha=0.3, temperature=10)
    arguments.update(overrides)
    distiller.compile(**arguments)  # the keyword call of the keras.io example


def test_keras_io_compile_call_is_an_alias_of_kopts_arguments():
    # The example builds its Distiller with keywords, student first.
    aliased = distill.Distiller(student=_student(), teacher=_teacher())
    _keras_io_compile(aliased)
    assert (aliased.student_loss_weight, aliased.temperature) == (pytest.approx(0.3), 10.0)
    kopt_named = distill.Distiller(_teacher(), _student(), distill.LogitsDistillation(temperature=10),
                                   student_loss_weight=0.3)
    kopt_named.compile(optimizer=keras.optimizers.Adam(), loss=CE,
                       metrics=[keras.metrics.SparseCategoricalAccuracy()])
    teacher, student = _logits(aliased)
    expected = keras_io_loss(teacher, student, Y, alpha=0.3, temperature=10)
    for distiller in (aliased, kopt_named):
        logs = distiller.evaluate(X, Y, batch_size=len(X), verbose=0, return_dict=True)
        assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    # They train alike too (same initial weights, same data order).
    histories = [d.fit(X, Y, batch_size=32, epochs=2, shuffle=False, verbose=0).history for d in (aliased, kopt_named)]
    for key in histories[1]:
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("kl", ["kl_divergence", "kld", "KLDivergence", keras.losses.kl_divergence])
def test_keras_io_distillation_loss_by_name_or_function(kl):
    distiller = distill.Distiller(_teacher(), _student())
    _keras_io_compile(distiller, distillation_loss_fn=kl, alpha=0.5, temperature=2.0)
    teacher, student = _logits(distiller)
    logs = distiller.evaluate(X, Y, batch_size=len(X), verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(keras_io_loss(teacher, student, Y, alpha=0.5, temperature=2.0), rel=1e-5)


def test_keras_io_arguments_without_an_equivalent_raise_naming_kopts():
    teacher, student = _teacher(), _student()
    distiller = distill.Distiller(teacher, student)
    # Another function of the softened probabilities: kopt's argument is the constructor's distillation_losses.
    with pytest.raises(ValueError, match="distillation_losses") as error:
        _keras_io_compile(distiller, distillation_loss_fn=keras.losses.MeanSquaredError(), alpha=0.5)
    assert "LogitsDistillation(temperature=T)" in str(error.value)
    assert distiller.student_loss_weight == pytest.approx(0.1)  # a failed compile changes nothing
    assert distiller.temperature == 4.0
    with pytest.raises(ValueError, match="distillation_losses"):  # KL summed over the batch is not the example's
        _keras_io_compile(distiller, distillation_loss_fn=keras.losses.KLDivergence(reduction="sum"))
    # KL on a Distiller whose distillation losses are not the example's single logits loss.
    features = distill.Distiller(teacher, student, [distill.LogitsDistillation(),
                                                    distill.FeatureDistillation("t_mid", "s_mid", projection="dense")])
    with pytest.raises(ValueError, match="Drop `distillation_loss_fn`"):
        _keras_io_compile(features)
    weighted = distill.Distiller(teacher, student, distill.LogitsDistillation(), distillation_loss_weights=[0.5])
    with pytest.raises(ValueError, match="distillation_loss_weights"):
        _keras_io_compile(weighted)
    probabilities = distill.Distiller(teacher, student, distill.LogitsDistillation(from_logits=False))
    with pytest.raises(ValueError, match="from_logits=False"):
        _keras_io_compile(probabilities)
    # The example's softmax is over axis 1 of one (batch, classes) output.
    sequence = keras.Sequential([keras.Input((4, 8)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        _keras_io_compile(distill.Distiller(sequence, keras.models.clone_model(sequence)))
    # No LogitsDistillation: no temperature to set.
    feature_only = distill.Distiller(teacher, student,
                                     distill.FeatureDistillation("t_mid", "s_mid", projection="dense"))
    with pytest.raises(ValueError, match=r"LogitsDistillation\(temperature=10.0\)"):
        feature_only.compile(optimizer="adam", loss=CE, temperature=10)
    with pytest.raises(ValueError, match="alpha"):
        _keras_io_compile(distiller, alpha=1.5)
    with pytest.raises(ValueError, match="student_loss_fn"):
        distiller.compile(optimizer="adam", loss=CE, student_loss_fn=CE)
    with pytest.raises(ValueError, match="reduction"):  # the Distiller averages over labelled samples
        _keras_io_compile(distiller, student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="sum"))
    with pytest.raises(TypeError, match="distillation_loss_weights") as error:  # a constructor argument
        distiller.compile(optimizer="adam", loss=CE, distillation_loss_weights=[1.0])
    assert "Trainer" not in str(error.value)


def test_evaluate_and_fit_log_one_loss_the_objective():
    w, temperature = 0.3, 4.0
    labels = Y.copy()
    labels[::4] = distill.UNLABELED
    distiller = distill.Distiller(_teacher(), _student(kernel_regularizer=keras.regularizers.L2(0.01)),
                                  student_loss_weight=w)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), loss=CE, metrics=["accuracy"])  # weights stay put
    teacher, student = _logits(distiller)
    regularization = 0.01 * np.sum(distiller.student.get_layer("s_mid").get_weights()[0].astype("float64") ** 2)

    # Batches of 40, 40 and 16: each batch's objective, averaged weighted by its samples (as Keras averages `loss`).
    parts = []
    for start in range(0, len(X), 40):
        batch = slice(start, start + 40)
        keep = labels[batch] >= 0
        supervised = np.mean(_np_ce(student[batch][keep], labels[batch][keep]))
        distillation = hinton(teacher[batch], student[batch], temperature)
        parts.append((len(X[batch]), supervised, distillation))
    sizes = np.array([p[0] for p in parts])
    supervised, distillation = (np.average([p[i] for p in parts], weights=sizes) for i in (1, 2))
    objective = w * supervised + (1 - w) * distillation + regularization

    logs = distiller.evaluate(X, labels, batch_size=40, verbose=0, return_dict=True)
    assert sorted(logs) == ["accuracy", "distillation_loss", "loss", "student_loss"]  # no `total_loss`
    assert logs["loss"] == pytest.approx(objective, rel=1e-5)
    assert logs["student_loss"] == pytest.approx(supervised, rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(distillation, rel=1e-5)
    history = distiller.fit(X, labels, batch_size=40, epochs=1, shuffle=False, verbose=0,
                            validation_data=(X, labels), validation_batch_size=40).history
    assert sorted(history) == sorted(["accuracy", "distillation_loss", "loss", "student_loss", "val_accuracy",
                                      "val_distillation_loss", "val_loss", "val_student_loss"])
    for key, value in (("loss", objective), ("student_loss", supervised), ("distillation_loss", distillation)):
        assert history[key][0] == pytest.approx(value, rel=1e-5), key
        assert history["val_" + key][0] == pytest.approx(value, rel=1e-5), key
    unlabelled = distiller.evaluate(X, batch_size=40, verbose=0, return_dict=True)  # inputs alone: no labels
    assert sorted(unlabelled) == ["distillation_loss", "loss", "student_loss"]
    assert unlabelled["loss"] == pytest.approx((1 - w) * distillation + regularization, rel=1e-5)


def test_keras_io_compiled_distiller_saves_and_loads(tmp_path):
    distiller = distill.Distiller(student=_student(), teacher=_teacher())
    _keras_io_compile(distiller, alpha=0.25, temperature=6.0)
    distiller.fit(X, Y, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    restored = keras.models.load_model(tmp_path / "distiller.keras")
    assert (restored.student_loss_weight, restored.temperature) == (pytest.approx(0.25), 6.0)
    expected = distiller.evaluate(X, Y, verbose=0, return_dict=True)
    result = restored.evaluate(X, Y, verbose=0, return_dict=True)  # compiled on load, with the same loss
    assert sorted(result) == sorted(expected) == ["distillation_loss", "loss", "sparse_categorical_accuracy",
                                                  "student_loss"]
    for key in expected:
        assert result[key] == pytest.approx(expected[key], rel=1e-5), key
    teacher, student = _logits(restored)
    full = restored.evaluate(X, Y, batch_size=len(X), verbose=0, return_dict=True)
    assert full["loss"] == pytest.approx(keras_io_loss(teacher, student, Y, alpha=0.25, temperature=6.0), rel=1e-5)
