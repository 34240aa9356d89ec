"""The main job (`kopt demo`) end to end on small settings, and the CLI around it."""

import json
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
