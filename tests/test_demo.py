"""The main job (`kopt demo`) end to end on small settings, and the CLI around it."""

import json
import os
import subprocess
import sys

import pytest

from kopt import convert, demo


def test_demo_writes_a_validated_sparse_int8_file_and_its_manifest(tmp_path):
    report = demo.run(epochs=4, prune_epochs=3, qat_epochs=1, output_dir=str(tmp_path), verbose=0)
    path = tmp_path / "digits_int8.tflite"
    assert report["path"] == str(path) and path.exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())["digits_int8.tflite"]
    assert manifest["command"] == "kopt demo" and manifest["bytes"] == path.stat().st_size
    info = convert.inspect(path)
    assert info.zero_weight_fraction >= 0.79  # the 80% pruning survived QAT and conversion
    assert all(v == pytest.approx(0.8, abs=0.005) for v in report["sparsity"].values())
    assert report["top1_agreement"] >= 0.97
    assert report["gzip_bytes"]["int8"] < report["gzip_bytes"]["pruned"] < report["gzip_bytes"]["float"]
    assert report["bytes"]["int8"] < 0.3 * report["bytes"]["float"]
    assert abs(report["int8_accuracy"] - report["qat_accuracy"]) <= 0.02


def test_cli_help_lists_demo():
    out = subprocess.run([sys.executable, "-m", "kopt.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "kopt.cli", "demo", "--epochs", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--epochs" in bad.stderr


def test_kopt_demo_prints_each_progress_line_once(tmp_path):
    # A fresh process, as users run it: under pytest the root logger already has pytest's handler, which hides the
    # bug (TensorFlow's absl logging calls logging.basicConfig() on its first message when the root has none).
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "kopt.cli", "demo", "--epochs", "1", "--prune-epochs", "1",
                           "--qat-epochs", "1", "--output-dir", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()

    def count(text):
        return sum(text in line for line in lines)

    for step in range(1, 6):  # the demo's own progress lines
        assert count(f"[{step}/5] ") == 1, proc.stdout
    # The converter's progress (the "kopt" logger): one line per event, three conversions (float, pruned, int8).
    assert count("converting 'digits_cnn' to float32") == 2, proc.stderr
    assert count("converting 'digits_cnn' to int8") == 1, proc.stderr
    assert count("against the Keras model") == 3, proc.stderr
    assert not [line for line in lines if line.startswith("INFO:kopt:")], proc.stderr
