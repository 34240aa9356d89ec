"""Test setup: 2 logical CPU devices (for tf.distribute tests), quiet logs, seeded."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn's digits as `kopt.datasets.load_digits` splits them: `((x_train, y_train), (x_test, y_test))`."""
    from kopt.datasets import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def digits_cnn(digits_data):
    """The demo's CNN trained on digits (15 epochs, seed 0; 97-98% accurate), compiled with an accuracy metric.

    Built once per test process and shared by many files: tests copy it (kopt's functions never change the model
    they are given) and must restore any weight they change.
    """
    from kopt.demo import build_cnn

    (x_train, y_train), _ = digits_data
    keras.utils.set_random_seed(0)
    model = build_cnn()
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=15, verbose=0)
    return model


@pytest.fixture(scope="session")
def digits_qat(digits_cnn, digits_data):
    """`digits_cnn` through `quantize_model` and one epoch of QAT (Adam 1e-4), with an accuracy metric."""
    from kopt import quantization

    (x_train, y_train), _ = digits_data
    keras.utils.set_random_seed(0)
    qat = quantization.quantize_model(digits_cnn)
    qat.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    qat.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    return qat


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


# Tests that run minutes in subprocesses (whole trainings, conversions, fresh venvs). Started first, so that the two
# pytest-xdist workers share the long ones and the many short tests fill in at the end (a long test collected last
# would leave one worker idle while the other finishes it).
_LONG_FILES = ("test_notebooks.py", "test_multi_worker.py", "test_backup_restore.py", "test_benchmarks.py",
               "test_tuner.py", "test_demo.py", "test_tfmot_guides.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        if item.path.name == "test_applications.py":  # the longest: 15 families, slowest first
            return 0
        if item.get_closest_marker("slow"):
            return 1
        return 2 if item.path.name in _LONG_FILES else 3

    items.sort(key=rank)  # stable: each file keeps its own order
