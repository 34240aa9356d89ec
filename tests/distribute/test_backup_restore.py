"""A 2-worker pruning job killed after epoch 2 and restarted resumes with BackupAndRestore exactly where it was."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from test_multi_worker import _free_ports

pytestmark = pytest.mark.slow  # worker processes are killed and restarted (slow tier, run by CI)

JOB = pathlib.Path(__file__).with_name("backup_job.py")


def _workers(out, name, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CONFIG")}
    ports = _free_ports(2)
    procs = [subprocess.Popen([sys.executable, str(JOB), str(out), str(i), ports, name, *extra], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [proc.communicate(timeout=600) for proc in procs]
    return [proc.returncode for proc in procs], [stderr for _, stderr in results]


def test_killed_workers_resume_with_the_same_pruning_state(tmp_path):
    codes, errors = _workers(tmp_path, "straight")
    assert codes == [0, 0], errors[0][-3000:]
    codes, errors = _workers(tmp_path, "resumed", "--crash-after", "2")
    assert codes == [3, 3], errors[0][-3000:]  # both killed right after epoch 2
    assert not (tmp_path / "resumed0.npz").exists()
    codes, errors = _workers(tmp_path, "resumed")
    assert codes == [0, 0], errors[0][-3000:]
    for i in range(2):
        straight, resumed = np.load(tmp_path / f"straight{i}.npz"), np.load(tmp_path / f"resumed{i}.npz")
        assert int(resumed["epochs_run"]) == 2 and int(straight["epochs_run"]) == 4  # resumed at epoch 3
        assert list(resumed["pruning_step"]) == list(straight["pruning_step"]) == [64] * 4
        for key in (k for k in straight.files if k.startswith("mask")):
            np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
            assert np.mean(resumed[key] == 0) == pytest.approx(0.6, abs=0.01)
        for key in (k for k in straight.files if k.startswith("weight")):
            np.testing.assert_allclose(resumed[key], straight[key], atol=1e-5, err_msg=key)

