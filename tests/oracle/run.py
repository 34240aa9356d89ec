"""Runs tfmot_oracle.py in a separate process (tfmot must not share a process with Keras 3)."""

import os
import subprocess
import sys

import numpy as np

ORACLE = os.path.join(os.path.dirname(__file__), "tfmot_oracle.py")


def run_oracle(mode, src, dst):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, ORACLE, mode, str(src), str(dst)], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"tfmot oracle failed ({mode}):\n{proc.stderr[-4000:]}")
    with np.load(dst) as result:
        return {k: result[k] for k in result.files}
