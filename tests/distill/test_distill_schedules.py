"""kopt.distill.DistillationSchedule: the values it sets are the ones the compiled train step uses."""

import keras
import numpy as np
import pytest

from kopt import distill
from tests.distill.test_distill_losses import hinton

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 8)).astype("float32")
Y = RNG.integers(0, 3, 32)


def _distiller(**kwargs):
    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller = distill.Distiller(teacher, student, **kwargs)
    # A zero learning rate keeps the student fixed, so every step's loss has a closed form.
    distiller.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


def test_temperature_schedule_reaches_the_compiled_loss():
    distiller = _distiller(student_loss_weight=0.0)
    temperatures = [8.0, 5.0, 2.0]
    schedule = distill.DistillationSchedule(temperature=lambda step: temperatures[step])
    history = distiller.fit(X, Y, batch_size=32, epochs=3, verbose=0, callbacks=[schedule]).history
    t = keras.ops.convert_to_numpy(distiller.teacher(X))
    s = keras.ops.convert_to_numpy(distiller.student(X))
    np.testing.assert_allclose(history["distillation_loss"], [hinton(t, s, T) for T in temperatures], rtol=1e-5)
    assert history["temperature"] == temperatures


def test_keras_schedule_and_weight_schedule():
    distiller = _distiller()
    schedule = distill.DistillationSchedule(
        temperature=keras.optimizers.schedules.PolynomialDecay(8.0, 3, 2.0),  # 8 -> 2 over 3 steps
        student_loss_weight=lambda step: 0.5 * step,
        distillation_loss_weights=[None])
    history = distiller.fit(X, Y, batch_size=32, epochs=3, verbose=0, callbacks=[schedule]).history
    assert history["temperature"] == pytest.approx([8.0, 6.0, 4.0])
    assert history["student_loss_weight"] == [0.0, 0.5, 1.0]
    expected = [w * sup + (1 - w) * dist for w, sup, dist in
                zip([0.0, 0.5, 1.0], history["student_loss"], history["distillation_loss"])]
    np.testing.assert_allclose(history["loss"], expected, rtol=1e-5)


def test_bad_schedules_raise_clear_errors():
    with pytest.raises(ValueError, match="temperature"):
        distill.DistillationSchedule(temperature=-1.0)
    with pytest.raises(ValueError, match="student_loss_weight"):
        distill.DistillationSchedule(student_loss_weight=2.0)
    with pytest.raises(ValueError, match="list"):
        distill.DistillationSchedule(distillation_loss_weights=0.5)
    distiller = _distiller()
    with pytest.raises(ValueError, match="temperature"):  # a schedule that leaves the valid range
        distiller.fit(X, Y, epochs=1, verbose=0,
                      callbacks=[distill.DistillationSchedule(temperature=lambda step: 0.0)])
    with pytest.raises(ValueError, match="2 entries"):
        distiller.fit(X, Y, epochs=1, verbose=0,
                      callbacks=[distill.DistillationSchedule(distillation_loss_weights=[0.5, 0.5])])
    plain = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    plain.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="Distiller"):
        plain.fit(X, np.zeros((32, 3)), epochs=1, verbose=0, callbacks=[distill.DistillationSchedule(temperature=2.0)])
