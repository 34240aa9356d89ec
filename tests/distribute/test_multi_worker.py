"""kopt under MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1, against a one-device run."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # two worker processes train on 127.0.0.1 (slow tier, run by CI)

JOB = pathlib.Path(__file__).with_name("multi_worker_job.py")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ",".join(map(str, ports))


def _run(out, *extra, workers=True, single=False):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CONFIG")}
    ports = _free_ports(2)
    commands = [[sys.executable, str(JOB), str(out), str(i), ports, *extra] for i in range(2)] if workers else []
    if single:
        commands.append([sys.executable, str(JOB), str(out), "single"])
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi_worker")
    _run(out, single=True)
    return {name: np.load(out / f"{name}.npz") for name in ("worker0", "worker1", "single")}


def test_plain_keras_fails_where_kopt_works(tmp_path):
    _run(tmp_path, "--plain")
    for i in range(2):
        result = json.loads((tmp_path / f"plain{i}.json").read_text())["result"]
        assert "PerReplica" in result, result  # keras#20585: what kopt's strategy fixes


def test_workers_agree_exactly(runs):
    w0, w1 = runs["worker0"], runs["worker1"]
    for key in w0.files:
        if key != "file_accuracy":
            np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)


def test_pruning_matches_one_device(runs):
    w0, single = runs["worker0"], runs["single"]
    assert list(w0["pruning_step"]) == list(single["pruning_step"]) == [48] * 4  # 3 epochs x 16 global steps
    masks = [k for k in w0.files if k.startswith("mask")]
    for key in masks:
        np.testing.assert_array_equal(w0[key], single[key], err_msg=key)
    np.testing.assert_allclose(w0["sparsity"], 0.5, atol=1e-3)
    for key in (k for k in w0.files if k.startswith("stripped")):
        np.testing.assert_allclose(w0[key], single[key], atol=1e-4, err_msg=key)


def test_qat_and_file_close_to_one_device(runs):
    w0, single = runs["worker0"], runs["single"]
    # Activation ranges are the widest over the workers' half batches: the one-device range.
    for key in (k for k in w0.files if k.startswith("qat_")):
        np.testing.assert_allclose(w0[key], single[key], atol=1e-3, err_msg=key)
    assert abs(float(w0["file_accuracy"]) - float(single["file_accuracy"])) <= 0.03


def test_distillation_matches_one_device(runs):
    w0, single = runs["worker0"], runs["single"]
    students = [k for k in w0.files if k.startswith("student")]
    assert students
    for key in students:  # the loss is scaled per replica: no gradient counted twice
        np.testing.assert_allclose(w0[key], single[key], atol=1e-4, err_msg=key)
