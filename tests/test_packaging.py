"""The wheel installs in a fresh venv with the oldest TensorFlow/Keras pair pyproject.toml allows, and works there.

The newest pair is what the test venv resolves (the rest of the suite runs on it). This test builds the wheel with
`python -m build`, installs it in a new venv pinned to the lower bounds of `tensorflow` and `keras`, and runs the main
job, the command-line tests and the ONNX tests from the installed wheel (not from the source tree).
"""

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _lower_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"(tensorflow|keras)>=([\d.]+),<([\d.]+)", requirement)
        if match:
            bounds[match[1]] = match[2]
    assert set(bounds) == {"tensorflow", "keras"}, project["dependencies"]
    return project["name"], bounds


def _run(command, cwd, env, timeout=900):
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_with_the_oldest_pair_runs_the_demo_and_the_cli(tmp_path):
    name, bounds = _lower_bounds()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ROOT)], ROOT, env)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith(name.replace("-", "_") + "-")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python, kopt = venv / "bin" / "python", venv / "bin" / "kopt"
    _run([str(python), "-m", "pip", "install", "-q", f"{wheel}[demo,onnx]", "pytest",
          f"tensorflow=={bounds['tensorflow']}.*", f"keras=={bounds['keras']}.*"], tmp_path, env)
    installed = _run([str(python), "-c", "import tensorflow, keras, kopt; "
                      "print(tensorflow.__version__, keras.__version__, kopt.__file__)"], tmp_path, env).split()
    assert installed[0].startswith(bounds["tensorflow"] + ".") and installed[1].startswith(bounds["keras"] + ".")
    assert str(venv) in installed[2]  # the wheel's kopt, not the source tree's

    from kopt import __version__

    assert _run([str(kopt), "--version"], tmp_path, env).strip() == f"kopt {__version__}"
    _run([str(kopt), "demo", "--epochs", "2", "--prune-epochs", "2", "--qat-epochs", "1", "--output-dir", "out"],
         tmp_path, env)
    assert (tmp_path / "out" / "digits_int8.tflite").stat().st_size > 0
    # The command-line and ONNX tests, run by the old pair against the installed wheel (rootdir: this checkout's
    # tests). ONNX export leans most on Keras internals (kopt/_keras/tracing.py), so it runs on both ends.
    _run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "not slow",
          str(ROOT / "tests" / "test_cli.py"), str(ROOT / "tests" / "convert" / "test_onnx.py"),
          "-k", "convert_writes or onnx_export or qat or float_cnn or normalization"], tmp_path, env)
