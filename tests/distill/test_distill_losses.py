"""kopt.distill losses against NumPy implementations of their formulas."""

import keras
import numpy as np
import pytest

from kopt import distill

RNG = np.random.default_rng(0)


def hinton(teacher_logits, student_logits, temperature):
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over the rest (Hinton et al. 2015)."""
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    p, log_p, log_q = np.exp(log_softmax(teacher_logits)), log_softmax(teacher_logits), log_softmax(student_logits)
    return temperature**2 * np.mean(np.sum(p * (log_p - log_q), axis=-1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("shape", [(16, 10), (4, 7, 5)])
def test_logits_loss_is_hintons_formula(temperature, shape):
    teacher, student = (3 * RNG.normal(size=shape)).astype("float64"), (3 * RNG.normal(size=shape)).astype("float64")
    value = distill.LogitsDistillation(temperature).compute_loss(teacher.astype("float32"), student.astype("float32"))
    assert float(value) == pytest.approx(hinton(teacher, student, temperature), rel=1e-5, abs=1e-6)


def test_issue_example_and_keras_default_differs():
    teacher = np.array([[2, 1, 0.1], [0.5, 3, -1]], "float32")
    student = np.array([[1, 1.5, 0.2], [0, 2, 0.5]], "float32")
    ours = float(distill.LogitsDistillation(temperature=3.0).compute_loss(teacher, student))
    assert ours == pytest.approx(0.3372, abs=1e-4) == hinton(teacher, student, 3.0)
    keras_default = float(keras.distillation.LogitsDistillation(temperature=3.0).compute_loss(teacher, student))
    assert abs(keras_default - ours) > 1.0  # Keras's default "kl_divergence" is not this loss (1.5485)


def test_probabilities_give_the_same_loss_as_logits():
    teacher, student = RNG.normal(size=(8, 6)).astype("float32"), RNG.normal(size=(8, 6)).astype("float32")
    softmax = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # noqa: E731
    from_probs = distill.LogitsDistillation(4.0, from_logits=False).compute_loss(softmax(teacher), softmax(student))
    assert float(from_probs) == pytest.approx(hinton(teacher, student, 4.0), rel=1e-4)


def test_identical_outputs_give_zero_and_several_outputs_add_up():
    logits = RNG.normal(size=(5, 4)).astype("float32")
    loss = distill.LogitsDistillation(2.0)
    assert float(loss.compute_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    other = RNG.normal(size=(5, 4)).astype("float32")
    both = loss.compute_loss([logits, other], [other, logits])
    assert float(both) == pytest.approx(hinton(logits, other, 2.0) + hinton(other, logits, 2.0), rel=1e-5)


@pytest.mark.parametrize("bad", [0, -1.0, "4", True, None])
def test_bad_temperature_is_refused(bad):
    with pytest.raises(ValueError, match="temperature"):
        distill.LogitsDistillation(bad)


def test_losses_round_trip_through_keras_serialization():
    for loss in (distill.LogitsDistillation(3.0, from_logits=False),
                 distill.FeatureDistillation("a", "b", loss="mae", projection="dense")):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(restored) is type(loss) and restored.get_config() == loss.get_config()


def _feature_models(teacher_width, student_width):
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(teacher_width, name="t_mid"),
                                keras.layers.Dense(3)], name="teacher")
    student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(student_width, name="s_mid"),
                                keras.layers.Dense(3)], name="student")
    return teacher, student


def test_feature_loss_is_the_mse_of_the_projected_student_features():
    teacher, student = _feature_models(8, 4)
    loss = distill.FeatureDistillation("t_mid", "s_mid", projection="dense")
    loss.validate_model_compatibility(teacher, student)
    t, s = RNG.normal(size=(5, 8)).astype("float32"), RNG.normal(size=(5, 4)).astype("float32")
    projection = loss.projection_layer.get_weights()[0]
    assert projection.shape == (4, 8)
    expected = np.mean((t - s @ projection) ** 2)
    assert float(loss.compute_loss(t, s)) == pytest.approx(expected, rel=1e-5)


def test_feature_shapes_must_match_without_projection():
    teacher, student = _feature_models(8, 4)
    with pytest.raises(ValueError, match="projection=\"dense\""):
        distill.FeatureDistillation("t_mid", "s_mid").validate_model_compatibility(teacher, student)
    with pytest.raises(ValueError, match="nope"):
        distill.FeatureDistillation("nope", "s_mid").validate_model_compatibility(teacher, student)
    with pytest.raises(ValueError, match="projection"):
        distill.FeatureDistillation("t_mid", "s_mid", projection="linear")
    with pytest.raises(ValueError, match="teacher_layer_name"):
        distill.FeatureDistillation(None, "s_mid")
