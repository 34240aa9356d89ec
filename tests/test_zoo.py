"""The committed files in tflite_models/ against their manifest: hashes, op counts and accuracies recomputed in
LiteRT / onnxruntime, and a rebuild by `python -m kopt.zoo --check` that reproduces the recorded accuracies."""

import gzip
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest
from litert_truth import only_output
from tensorflow.lite.tools import flatbuffer_utils

from kopt import zoo

FOLDER = pathlib.Path(__file__).resolve().parents[1] / "tflite_models"
MANIFEST = json.loads((FOLDER / "manifest.json").read_text())


def test_every_file_in_the_folder_has_a_manifest_entry_and_every_entry_a_file():
    files = {p.name for p in FOLDER.iterdir() if p.suffix in (".tflite", ".onnx")}
    assert files == set(MANIFEST)
    assert set(zoo.FILES) <= files  # the whole zoo is committed


def _op_counts(content, name):
    if name.endswith(".onnx"):
        ops = [node.op_type for node in onnx.load_from_string(content).graph.node]
    else:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
        ops = [flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators]
    return {op: ops.count(op) for op in set(ops)}


def _accuracy(content, name, x, y):
    if name.endswith(".onnx"):
        session = onnxruntime.InferenceSession(content, providers=["CPUExecutionProvider"])
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    else:
        logits = only_output(content, x)
    return float(np.mean(logits.argmax(-1) == y))


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_file_matches_its_manifest_entry(name):
    entry = MANIFEST[name]
    content = (FOLDER / name).read_bytes()
    assert hashlib.sha256(content).hexdigest() == entry["sha256"]
    assert len(content) == entry["bytes"]
    assert len(gzip.compress(content, 9, mtime=0)) == entry["gzip_bytes"]
    assert _op_counts(content, name) == entry["op_counts"]
    assert {"command", "source", "versions", "data"} <= set(entry)
    assert {"kopt-keras", "tensorflow", "keras"} <= set(entry["versions"])
    _, (x_test, y_test) = zoo.digits_data(entry["data"], seed=entry.get("seed", 0))
    assert _accuracy(content, name, x_test, y_test) == pytest.approx(entry["accuracy"], abs=1e-9)
    if "int8" in name:
        (details,) = [d for d in _input_details(content)]
        assert details == np.int8  # full-integer files take int8 input


def _input_details(content):
    from ai_edge_litert.interpreter import Interpreter

    return [d["dtype"] for d in Interpreter(model_content=content).get_input_details()]


@pytest.mark.slow
def test_rebuilding_reproduces_the_recorded_accuracies(tmp_path):
    only = "digits_cnn_float.tflite,digits_cnn_ptq_int8.tflite,digits_cnn_float.onnx"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    # Seeded, deterministic training: equal on this machine and these versions; another CPU may move a sample.
    proc = subprocess.run([sys.executable, "-m", "kopt.zoo", "--check", "--only", only, "--tolerance", "0.005",
                           "--output-dir", str(FOLDER)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in only.split(","):
        assert name in proc.stdout


def test_unknown_files_are_refused():
    with pytest.raises(ValueError, match="`only`: unknown file"):
        zoo.build("unused", only=["resnet.tflite"])


def test_readme_table_matches_the_manifest():
    readme = (FOLDER.parent / "README.md").read_text()
    table = next(b for b in readme.split("## Model zoo", 1)[1].split("\n\n") if b.startswith("| file"))
    rows = [line.split("|")[1:5] for line in table.splitlines()[2:]]
    assert len(rows) == len(MANIFEST)
    for name, accuracy, size, gzipped in rows:
        if "kopt demo" in name:  # rewritten by whoever runs the Quickstart's `kopt demo` here
            continue
        entry = MANIFEST[name.split("`")[1]]
        assert float(accuracy) == pytest.approx(entry["accuracy"], abs=5e-5)
        assert int(size.replace(",", "")) == entry["bytes"] and int(gzipped.replace(",", "")) == entry["gzip_bytes"]
