"""KerasHub families through prune, QAT int8, post-training int8 and QDQ ONNX (benchmarks/coverage_hub.py).

Four families cover what the others share: BERT (text encoder, TransformerEncoder), DeBERTa-v3 (a layer whose
sublayers are built on its first call), ViT (a layer whose config does not round-trip, GELU and a position-id
tensor inside custom layers) and GPT-2 (a decoder, classified on its last token). The full table of 21 families is
in benchmarks/RESULTS.md. Each family runs in its own process; text models take a fixed sequence length.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

COVERAGE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "coverage_hub.py"
FAMILIES = ["Bert", "DebertaV3", "ViT", "GPT2"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_family_prunes_quantizes_and_exports(name, tmp_path):
    out = tmp_path / "coverage.json"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, str(COVERAGE), "--only", name, "--json", str(out)], capture_output=True,
                          text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(out.read_text())
    assert "crashed" not in result, result
    for step in ("prune", "qat", "ptq", "onnx"):
        assert "error" not in result[step], f"{step}: {result[step].get('error')}\n{result[step].get('trace')}"
    prune = result["prune"]
    # Every Dense / EinsumDense / Conv / Embedding kernel of the model, counted on its own layers at any depth.
    assert prune["pruned"] == prune["kernels"] > 0
    assert prune["strip_max_abs_difference"] < 1e-5
