"""get_strategy / describe / global_batch_size in this process (2 logical CPUs, see conftest.py)."""

import json

import pytest
import tensorflow as tf

import kopt
from kopt.distribute import strategy as strategy_module


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch):
    for name in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR"):
        monkeypatch.delenv(name, raising=False)


def test_default_strategy_on_one_cpu():
    strategy = kopt.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert "default strategy, 1 replica in sync: chosen for one device" in kopt.distribute.describe(strategy)
    assert kopt.distribute.global_batch_size(32, strategy) == 32


def test_mirrored_over_the_devices_given():
    strategy = kopt.distribute.get_strategy(devices=["/cpu:0", "/cpu:1"])
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    text = kopt.distribute.describe(strategy)
    assert "MirroredStrategy, 2 replicas in sync" in text and "devices given" in text
    assert kopt.distribute.global_batch_size(32, strategy) == 64
    # No fit here: a second MirroredStrategy over the same devices running collectives in this process makes
    # later ones fail with "Shape mismatch in the collective instance". kopt under MirroredStrategy is trained in
    # tests/sparsity/test_distributed.py and tests/quantization (with ReductionToOneDevice, for the same reason).


def test_devices_that_do_not_exist():
    with pytest.raises(ValueError, match=r"devices that do not exist: \['/gpu:0'\].*set_logical_device_configuration"):
        kopt.distribute.get_strategy(devices=["/cpu:0", "/gpu:0"])
    with pytest.raises(ValueError, match="non-empty list"):
        kopt.distribute.get_strategy(devices="/cpu:0")


@pytest.mark.parametrize("config, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}), 'needs a "cluster" dict and a "task" dict'),
    (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}),
     "is not in its cluster"),
])
def test_malformed_tf_config(monkeypatch, config, match):
    monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(ValueError, match=match):
        kopt.distribute.get_strategy()


def test_single_worker_tf_config_is_one_device(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert kopt.distribute.get_strategy().num_replicas_in_sync == 1


def test_tpu_asked_for_but_absent():
    with pytest.raises(RuntimeError, match=r"A TPU was asked for \(tpu='local'\).*Change runtime type.*tensorflow-tpu"):
        kopt.distribute.get_strategy(tpu="local")


def test_multi_worker_must_come_first(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(RuntimeError, match="before TensorFlow runs anything"):
        kopt.distribute.get_strategy()


def test_bad_batch_size():
    with pytest.raises(ValueError, match="per_replica"):
        kopt.distribute.global_batch_size(0)
    assert strategy_module.describe() .startswith("default strategy")
