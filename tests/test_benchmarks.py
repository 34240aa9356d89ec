"""The benchmark scripts still run (tiny settings; their figures live in benchmarks/RESULTS.md, not in tests)."""

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # each benchmark script runs end to end in its own process (slow tier, run by CI)

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, label", [("bench_pruning_step.py", "kopt pruned / Keras 3 dense"),
                                           ("bench_qat_step.py", "kopt QAT / Keras 3 float")])
def test_step_benchmark_runs(script, label):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--rounds", "1", "--steps", "4"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert label in proc.stdout and "tfmot" in proc.stdout


def test_distillation_benchmark_runs():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_distill.py"), "--quick", "--seeds", "1",
                           "--rounds", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "student distilled" in proc.stdout and "cache / online" in proc.stdout


def test_search_benchmark_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_search.py"), "--quick", "--plot",
                           str(tmp_path / "front.png")], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "`kopt demo` int8 file (same run)" in proc.stdout and "wall time per trial" in proc.stdout
    assert (tmp_path / "front.png").stat().st_size > 0


def test_distribute_benchmark_runs():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_distribute.py"), "--rounds", "1", "--steps", "5"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kopt pruned / Keras 3, 2 replicas" in proc.stdout and "| kopt qat, 2 replicas |" in proc.stdout


def test_onnx_coverage_benchmark_runs():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "onnx_coverage.py"), "--only", "MobileNetV3Small"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| MobileNetV3Small float |")]
    assert row.endswith("| pass |") and float(row.split("|")[2]) > 50


@pytest.mark.parametrize("part, label", [("digits", "| small architecture from scratch |"),
                                         ("low_rank", "| digits_cnn | rank 1/4 |")])
def test_structured_benchmark_runs(part, label):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_structured.py"), "--part", part, "--epochs", "1",
                           "--finetune-epochs", "1", "--rounds", "1"], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert label in proc.stdout

