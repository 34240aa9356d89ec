"""kopt.distill.Distiller: the loss it trains on, the teacher cache, unlabelled data, errors, saving."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kopt import distill, quantization, sparsity
from tests.distill.test_distill_losses import hinton

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 8)).astype("float32")
Y = RNG.integers(0, 3, 96)
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _teacher():
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu", name="t_mid"),
                             keras.layers.Dense(3)], name="teacher")


def _student(**dense_kwargs):
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="relu", name="s_mid", **dense_kwargs),
                             keras.layers.Dense(3)], name="student")


def _np_ce(logits, labels):
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def _loss_parts(distiller, x, y):
    distiller.reset_metrics()
    total = distiller.compute_loss(x, y, distiller(x, training=False), training=False)
    return float(total), float(distiller.student_loss_tracker.result()), float(
        distiller.distillation_loss_tracker.result())


def test_loss_is_weighted_supervised_plus_hinton():
    teacher, student = _teacher(), _student()
    distiller = distill.Distiller(teacher, student, student_loss_weight=0.3)
    distiller.compile(optimizer="adam", loss=CE)
    total, supervised, distillation = _loss_parts(distiller, X, Y)
    t, s = keras.ops.convert_to_numpy(teacher(X)), keras.ops.convert_to_numpy(student(X))
    assert distillation == pytest.approx(hinton(t, s, 4.0), rel=1e-5)  # the default loss: T=4 Hinton
    assert supervised == pytest.approx(np.mean(_np_ce(s, Y)), rel=1e-5)
    assert total == pytest.approx(0.3 * supervised + 0.7 * distillation, rel=1e-5)


def test_unlabelled_samples_count_only_in_the_distillation_loss():
    distiller = distill.Distiller(_teacher(), _student())
    distiller.compile(optimizer="adam", loss=CE)
    labels = Y.copy()
    labels[::3] = distill.UNLABELED
    _, supervised, _ = _loss_parts(distiller, X, labels)
    s = keras.ops.convert_to_numpy(distiller.student(X))
    keep = labels >= 0
    assert supervised == pytest.approx(np.mean(_np_ce(s[keep], labels[keep])), rel=1e-5)
    # Float (one-hot) labels mark an unlabelled sample with NaN.
    one_hot = np.eye(3, dtype="float32")[Y]
    one_hot[::3] = np.nan
    distiller.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    _, supervised_one_hot, _ = _loss_parts(distiller, X, one_hot)
    assert supervised_one_hot == pytest.approx(supervised, rel=1e-5)


def test_fit_without_labels_learns_from_the_teacher_alone():
    teacher = _teacher()
    distiller = distill.Distiller(teacher, _student())
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))  # no supervised loss needed
    teacher_before = [w.copy() for w in teacher.get_weights()]
    history = distiller.fit(X, epochs=8, batch_size=32, verbose=0).history
    assert history["student_loss"] == [0.0] * 8
    assert history["distillation_loss"][-1] < 0.7 * history["distillation_loss"][0]
    assert "accuracy" not in history
    for before, after in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="compile"):  # labels without a supervised loss
        distiller.fit(X, Y, epochs=1, verbose=0)


def test_gradients_reach_the_student_only():
    teacher, student = _teacher(), _student()
    distiller = distill.Distiller(teacher, student)
    distiller.compile(optimizer="adam", loss=CE)
    with tf.GradientTape(persistent=True) as tape:
        loss = distiller.compute_loss(X, Y, distiller(X, training=True))
    assert all(g is None for g in tape.gradient(loss, teacher.trainable_variables + teacher.non_trainable_variables))
    assert teacher.trainable_variables == [] and len(distiller.trainable_variables) == len(student.trainable_variables)
    student_grads = tape.gradient(loss, student.trainable_variables)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in student_grads)


def _fit_history(mode, x, y=None, **fit_kwargs):
    distiller = distill.Distiller(_teacher(), _student(), teacher_outputs=mode)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), loss=CE, metrics=["accuracy"])
    keras.utils.set_random_seed(5)  # the same shuffling for both modes
    return distiller.fit(x, y, epochs=2, verbose=0, **fit_kwargs).history


def test_cached_and_online_teacher_give_the_same_losses():
    labels = Y.copy()
    labels[1::2] = distill.UNLABELED
    online = _fit_history("online", X, labels, batch_size=16, shuffle=True)
    cached = _fit_history("cache", X, labels, batch_size=16, shuffle=True)  # fit reshuffles arrays every epoch
    assert online.keys() == cached.keys()
    for key in online:
        np.testing.assert_allclose(cached[key], online[key], rtol=1e-5, err_msg=key)
    dataset = tf.data.Dataset.from_tensor_slices((X, labels)).shuffle(96, seed=1, reshuffle_each_iteration=False)
    online = _fit_history("online", dataset.batch(16))
    cached = _fit_history("cache", dataset.batch(16))
    for key in online:
        np.testing.assert_allclose(cached[key], online[key], rtol=1e-5, err_msg=key)


class SampleCounter(keras.layers.Layer):
    """Identity that counts the samples it sees (in a variable, so compiled calls count too)."""

    def build(self, input_shape):
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x):
        self.seen.assign_add(keras.ops.cast(keras.ops.shape(x)[0], "float32"))
        return x


def test_cache_runs_the_teacher_once_per_sample():
    counter = SampleCounter()
    teacher = keras.Sequential([keras.Input((8,)), counter, keras.layers.Dense(3)])
    distiller = distill.Distiller(teacher, _student(), teacher_outputs="cache")
    distiller.compile(optimizer="adam", loss=CE)
    distiller.fit(X, Y, epochs=3, batch_size=32, verbose=0)
    assert float(counter.seen) == len(X)
    online = distill.Distiller(teacher, _student())
    online.compile(optimizer="adam", loss=CE)
    online.fit(X, Y, epochs=3, batch_size=32, verbose=0)
    assert float(counter.seen) == len(X) + 3 * len(X)


NOISE = keras.layers.GaussianNoise(0.1)


@pytest.mark.parametrize("dataset, reason", [
    (lambda d: d.shuffle(96), "reshuffle"),
    (lambda d: d.map(lambda x, y: (x + tf.random.normal((8,)), y)), "random op"),
    (lambda d: d.map(lambda x, y: (NOISE(x, training=True), y)), "random op"),  # Keras augmentation
    (lambda d: d.map(lambda x, y: (x, y), num_parallel_calls=2, deterministic=False), "deterministic=False"),
])
def test_cache_refuses_inputs_that_change_between_epochs(dataset, reason):
    distiller = distill.Distiller(_teacher(), _student(), teacher_outputs="cache")
    distiller.compile(optimizer="adam", loss=CE)
    with pytest.raises(ValueError, match=reason):
        distiller.fit(dataset(tf.data.Dataset.from_tensor_slices((X, Y))).batch(16), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="repeats forever"):
        distiller.fit(tf.data.Dataset.from_tensor_slices((X, Y)).batch(16).repeat(), epochs=1, steps_per_epoch=2,
                      verbose=0)

    def generator():
        while True:
            yield X[:16], Y[:16]

    with pytest.raises(ValueError, match="generator"):
        distiller.fit(generator(), epochs=1, steps_per_epoch=2, verbose=0)


def test_bad_arguments_raise_clear_errors():
    teacher, student = _teacher(), _student()
    other_classes = keras.Sequential([keras.Input((8,)), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="same shapes"):
        distill.Distiller(teacher, other_classes)
    with pytest.raises(ValueError, match="nope"):
        distill.Distiller(teacher, student, [distill.FeatureDistillation("nope", "s_mid")])
    with pytest.raises(ValueError, match="student_loss_weight"):
        distill.Distiller(teacher, student, student_loss_weight=1.5)
    with pytest.raises(ValueError, match="distillation_loss_weights"):
        distill.Distiller(teacher, student, distillation_loss_weights=[-0.1])
    with pytest.raises(ValueError, match="distillation_loss_weights"):
        distill.Distiller(teacher, student, [distill.LogitsDistillation()], distillation_loss_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="teacher_outputs"):
        distill.Distiller(teacher, student, teacher_outputs="offline")
    with pytest.warns(UserWarning, match="not Hinton"):
        distill.Distiller(teacher, student, keras.distillation.LogitsDistillation())
    distiller = distill.Distiller(teacher, student)
    distiller.compile(optimizer="adam", loss=CE)
    with pytest.raises(ValueError, match="temperature"):
        distiller.temperature = 0.0
    teacher.trainable = True  # after compile: it would train too
    with pytest.raises(ValueError, match="frozen"):
        distiller.fit(X, Y, epochs=1, verbose=0)


def test_student_regularization_losses_count():
    distiller = distill.Distiller(_teacher(), _student(kernel_regularizer=keras.regularizers.L2(0.5)))
    distiller.compile(optimizer="adam", loss=CE)
    total, supervised, distillation = _loss_parts(distiller, X, Y)
    kernel = distiller.student.get_layer("s_mid").get_weights()[0]
    assert total == pytest.approx(0.1 * supervised + 0.9 * distillation + 0.5 * np.sum(kernel**2), rel=1e-5)


def test_feature_distillation_trains_the_projection_with_one_student_pass():
    teacher, student = _teacher(), _student()
    loss = distill.FeatureDistillation("t_mid", "s_mid", projection="dense")
    distiller = distill.Distiller(teacher, student, [distill.LogitsDistillation(), loss], [1.0, 0.5])
    distiller.compile(optimizer="adam", loss=CE, metrics=["accuracy"])
    projection = loss.projection_layer.get_weights()[0].copy()
    distiller.fit(X, Y, epochs=1, verbose=0)
    assert not np.allclose(projection, loss.projection_layer.get_weights()[0])
    assert distiller.predict(X[:5], verbose=0).shape == (5, 3)
    assert [v.name for v in distiller.student.weights] == [v.name for v in _student().weights]  # no projection


def test_pruned_student_reaches_its_sparsity_and_quantized_student_converts(tmp_path):
    pruned = sparsity.prune_low_magnitude(_student(), pruning_schedule=sparsity.PolynomialDecay(0.0, 0.75, 0, 6, frequency=1))
    distiller = distill.Distiller(_teacher(), pruned, teacher_outputs="cache")
    distiller.compile(optimizer="adam", loss=CE)
    distiller.fit(X, Y, epochs=3, batch_size=32, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(distiller.student)
    for layer in stripped.layers:
        assert np.mean(layer.get_weights()[0] == 0) == pytest.approx(0.75, abs=0.02), layer.name
    qat = quantization.quantize_model(stripped)
    distiller = distill.Distiller(distiller.teacher, qat)
    distiller.compile(optimizer="adam", loss=CE)
    distiller.fit(X, Y, epochs=2, batch_size=32, verbose=0)
    from kopt.convert import to_tflite  # raises unless the file is full int8 and agrees with the QAT model
    tflite = to_tflite(distiller.student, str(tmp_path / "student.tflite"), quantization="int8",
                       representative_data=X)
    from litert_truth import file_sqnr
    assert file_sqnr(distiller.student, tflite, X) > 30.0


def test_distiller_and_stripped_student_save_and_load(tmp_path):
    distiller = distill.Distiller(_teacher(), _student(), student_loss_weight=0.2, teacher_outputs="cache")
    distiller.compile(optimizer="adam", loss=CE, metrics=["accuracy"])
    distiller.fit(X, Y, epochs=1, verbose=0)
    distiller.temperature = 2.5
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.models.load_model(path)
    assert (type(restored), restored.teacher_outputs, restored.student_loss_weight) == (
        distill.Distiller, "cache", pytest.approx(0.2))
    assert restored.temperature == 2.5
    np.testing.assert_allclose(restored.predict(X, verbose=0), distiller.predict(X, verbose=0), rtol=1e-6)
    assert restored.fit(X, Y, epochs=1, verbose=0).history["loss"][0] > 0  # compiled on load
    # The student alone loads with plain Keras (no kopt import).
    distiller.student.save(tmp_path / "student.keras")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "expected.npy", distiller.student.predict(X, verbose=0))
    code = ("import keras, numpy as np, sys; m = keras.models.load_model('student.keras'); "
            "np.testing.assert_allclose(m.predict(np.load('x.npy'), verbose=0), np.load('expected.npy'), rtol=1e-6); "
            "assert 'kopt' not in sys.modules")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_mirrored_strategy_trains_as_one_device():
    """The distillation loss is scaled per replica as Keras's losses are: 2 replicas = 1 device."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2

    def train(strategy):
        with strategy.scope():
            distiller = distill.Distiller(_teacher(), _student())
            distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=CE)
        history = distiller.fit(X, Y, batch_size=32, epochs=2, shuffle=False, verbose=0).history
        return history["loss"], distiller.student.get_weights()

    # Not the default collective all-reduce: its instance keys clash with other MirroredStrategies of the process.
    mirrored = train(tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice()))
    single = train(tf.distribute.OneDeviceStrategy(devices[0]))
    np.testing.assert_allclose(mirrored[0], single[0], rtol=1e-5)
    for a, b in zip(mirrored[1], single[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["metrics", "weighted_metrics"])
def test_metrics_skip_unlabelled_samples(kind):
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(
        3, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([1.0, 0.0, 0.0]))])
    labels = np.where(np.arange(len(Y)) % 4 == 0, 0, distill.UNLABELED)  # labelled ones are class 0
    labels[4] = 1
    distiller = distill.Distiller(_teacher(), student)  # the student always predicts class 0
    distiller.compile(optimizer="adam", loss=CE, **{kind: ["accuracy"]})
    result = distiller.evaluate(X, labels, batch_size=16, verbose=0, return_dict=True)
    labelled = labels >= 0
    assert result["accuracy"] == pytest.approx(np.mean(labels[labelled] == 0))  # 23/24, not counting -1 as 0


def test_pruned_and_qat_students_resume_from_a_saved_distiller(tmp_path):
    pruned = sparsity.prune_low_magnitude(_student(), pruning_schedule=sparsity.PolynomialDecay(0.0, 0.5, 0, 8,
                                                                                                frequency=1))
    distiller = distill.Distiller(_teacher(), pruned)
    distiller.compile(optimizer="adam", loss=CE)
    distiller.fit(X[:64], Y[:64], epochs=1, batch_size=16, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    distiller.save(tmp_path / "pruned.keras")
    restored = keras.models.load_model(tmp_path / "pruned.keras")
    layers = [layer for layer in restored.student.layers if isinstance(layer, sparsity.PruneLowMagnitude)]
    assert [int(layer.pruning_step) for layer in layers] == [4, 4]  # 4 steps done: training resumes there
    restored.fit(X[:64], Y[:64], epochs=1, batch_size=16, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    stripped = sparsity.strip_pruning(restored.student)
    assert [np.mean(layer.get_weights()[0] == 0) for layer in stripped.layers] == [0.5, 0.5]

    qat = distill.Distiller(restored.teacher, quantization.quantize_model(stripped))
    qat.compile(optimizer="adam", loss=CE)
    qat.fit(X, Y, epochs=1, verbose=0)
    qat.save(tmp_path / "qat.keras")
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "qat.keras").predict(X, verbose=0),
                                  qat.predict(X, verbose=0))


@pytest.mark.slow
def test_applications_teacher_and_student_with_features_cache_and_int8(tmp_path):
    """keras.applications architectures: MobileNetV2 teaches MobileNet, logits plus a projected feature map."""
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 1, (64, 32, 32, 3)).astype("float32"), rng.integers(0, 10, 64)
    kwargs = dict(weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None)
    teacher = keras.applications.MobileNetV2(alpha=0.35, **kwargs)
    student = keras.applications.MobileNet(alpha=0.25, **kwargs)
    feature = distill.FeatureDistillation("block_6_expand_relu", "conv_pw_5_relu", projection="dense")  # 64 -> 96
    distiller = distill.Distiller(teacher, student, [distill.LogitsDistillation(), feature], [1.0, 0.1],
                                  teacher_outputs="cache")
    distiller.compile(optimizer="adam", loss=CE, metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=2, batch_size=16, verbose=0).history
    assert history["distillation_loss"][1] < history["distillation_loss"][0]
    qat = distill.Distiller(teacher, quantization.quantize_model(distiller.student), teacher_outputs="cache")
    qat.compile(optimizer="adam", loss=CE)
    qat.fit(x, y, epochs=1, batch_size=16, verbose=0)
    from kopt.convert import to_tflite  # raises unless full int8 and agreeing with the QAT student
    to_tflite(qat.student, str(tmp_path / "student.tflite"), representative_data=x)
