"""`kopt analyze`: the sensitivity table, JSON and plot of a saved model, against `kopt.analysis.sensitivity`;
with --max-drop, the mixed-precision file of `kopt.analysis.auto_mixed_precision`, read back in LiteRT."""

import json
import shutil

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from outlier_models import trained_weight_outlier_digits

from kopt import analysis, cli

_PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_cnn, digits_data):
    """The digits CNN saved as .keras, 64 test samples as .npy next to it, and two bad .npy files."""
    folder = tmp_path_factory.mktemp("analyze")
    _, (x_test, _) = digits_data
    x = x_test[:64]
    digits_cnn.save(folder / "model.keras")
    np.save(folder / "x.npy", x)
    np.save(folder / "flat.npy", x.reshape(len(x), -1))  # (64, 64): the model takes (8, 8, 1)
    np.save(folder / "text.npy", np.full((4, 8, 8, 1), "a"))
    return folder, digits_cnn, x


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _quantized_layers(model):
    return {layer.name for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))}


def test_analyze_prints_a_table_of_the_layers_and_writes_a_png_next_to_the_model(files, capsys):
    folder, model, _ = files
    code, out, err = _run(capsys, "analyze", folder / "model.keras", "--data", folder / "x.npy")
    assert code == 0, err
    assert "int8 sensitivity (post-training, 64 samples" in out and "measuring int8 sensitivity" in err
    table = out.splitlines()[2:-1]  # after the summary line and the header, before "wrote ..."
    assert {line.split()[0] for line in table} == _quantized_layers(model)
    plot = folder / "model_sensitivity.png"
    assert out.splitlines()[-1] == f"wrote {plot}"
    assert plot.read_bytes()[:8] == _PNG


def test_analyze_json_matches_the_python_api(files, capsys, tmp_path):
    folder, model, x = files
    plot = tmp_path / "chart.png"
    code, out, err = _run(capsys, "analyze", folder / "model.keras", "--data", folder / "x.npy", "--json",
                          "--plot", plot)
    assert code == 0, err
    result = json.loads(out)
    truth = analysis.sensitivity(model, x).to_dict()
    assert result["samples"] == truth["samples"] == 64 and result["plot"] == str(plot)
    assert result["sqnr_all_db"] == pytest.approx(truth["sqnr_all_db"], abs=1e-6)
    assert [r["layer"] for r in result["rows"]] == [r["layer"] for r in truth["rows"]]
    for got, expected in zip(result["rows"], truth["rows"]):
        assert got["sqnr_only_db"] == pytest.approx(expected["sqnr_only_db"], abs=1e-6), got["layer"]
        assert got["sqnr_all_but_db"] == pytest.approx(expected["sqnr_all_but_db"], abs=1e-6), got["layer"]
    assert plot.read_bytes()[:8] == _PNG

    code, out, err = _run(capsys, "analyze", folder / "model.keras", "--data", folder / "x.npy", "--json",
                          "--plot", plot, "--top", 2, "--max-samples", 64)
    assert code == 0, err
    assert [r["layer"] for r in json.loads(out)["rows"]] == [r["layer"] for r in truth["rows"][:2]]


@pytest.mark.parametrize("argv, message", [
    (["{folder}/model.keras", "--data", "{folder}/flat.npy"], "--data '{folder}/flat.npy' has samples of shape (64,)"),
    (["{folder}/model.keras", "--data", "{folder}/text.npy"], "--data '{folder}/text.npy' must be numeric"),
    (["{folder}/model.keras", "--data", "{folder}/nope.npy"], "--data '{folder}/nope.npy': no such file"),
    (["{folder}/x.npy", "--data", "{folder}/x.npy"], "MODEL '{folder}/x.npy': expected a Keras model file"),
    (["{folder}/model.keras", "--data", "{folder}/x.npy", "--plot", "{folder}/no/such/chart.png"],
     "does not exist. Create it first"),
])
def test_bad_input_is_one_line_with_exit_code_2(files, capsys, argv, message):
    folder = files[0]
    code, out, err = _run(capsys, "analyze", *[a.format(folder=folder) for a in argv])
    assert code == 2
    assert message.format(folder=folder) in err.splitlines()[-1]
    assert "Traceback" not in err and not out


@pytest.fixture(scope="module")
def outlier_files(tmp_path_factory, digits_data):
    """A digits model whose 'logits' kernel has a huge row from a dead hidden unit (the float model is unchanged,
    per-tensor int8 of 'logits' loses accuracy; as in tests/analysis/test_auto_mixed_precision.py), saved as
    .keras with its inputs and integer labels as .npy."""
    (x_train, y_train), (x_test, y_test) = digits_data
    model = trained_weight_outlier_digits(x_train, y_train)
    folder = tmp_path_factory.mktemp("analyze_mixed")
    model.save(folder / "model.keras")
    np.save(folder / "x.npy", np.concatenate([x_train[:256], x_test]))
    np.save(folder / "y.npy", np.concatenate([y_train[:256], y_test]))
    np.save(folder / "y_short.npy", y_test[:10])
    return folder


def _op_dtypes(path):
    """[(op name, output dtype name)] of the .tflite file, read with LiteRT."""
    it = Interpreter(model_path=str(path))
    details = it.get_tensor_details()
    return [(op["op_name"], np.dtype(details[op["outputs"][0]]["dtype"]).name) for op in it._get_ops_details()]


def test_max_drop_writes_a_file_with_the_outlier_layer_kept_float(outlier_files, capsys):
    folder = outlier_files
    code, out, err = _run(capsys, "analyze", folder / "model.keras", "--data", folder / "x.npy", "--labels",
                          folder / "y.npy", "--max-drop", 0.01, "--json")
    assert code == 0, err
    result = json.loads(out)
    mixed = result["mixed_precision"]
    assert mixed["kept_float"] == ["logits"] and mixed["met"] is True, mixed
    assert mixed["target"] == "accuracy drop <= 0.01" and mixed["budget"] == "size"
    assert mixed["steps"][0]["kept_float"] == [] and mixed["steps"][0]["accuracy"] < mixed["float_accuracy"] - 0.02
    output = folder / "model_mixed.tflite"
    assert mixed["path"] == str(output) and output.is_file()
    assert (folder / "model_mixed_precision.png").read_bytes()[:8] == _PNG
    assert mixed["plot"] == str(folder / "model_mixed_precision.png")
    assert {row["layer"] for row in result["rows"]} == {"conv", "hidden", "logits"}  # the sensitivity table too
    ops = _op_dtypes(output)
    fully_connected = [dtype for name, dtype in ops if name == "FULLY_CONNECTED"]
    assert fully_connected == ["int8", "float32"], ops  # 'hidden' int8, 'logits' computed in float
    assert [dtype for name, dtype in ops if name == "CONV_2D"] == ["int8"], ops


@pytest.mark.parametrize("argv, message", [
    (["--max-drop", "0.01"], "--max-drop compares top-1 accuracies, so it needs --labels"),
    (["--max-drop", "0.01", "--min-sqnr", "30", "--labels", "{folder}/y.npy"], "--max-drop and --min-sqnr are two"),
    (["--max-drop", "0.01", "--labels", "{folder}/y_short.npy"],
     "--labels '{folder}/y_short.npy' has 10 labels but --data has"),
    (["--min-sqnr", "30", "--output", "{tmp}/mixed.onnx"], "--output '{tmp}/mixed.onnx': the output file must end in "
                                                           ".tflite"),
    (["--min-sqnr", "30", "--output", "{tmp}/no/mixed.tflite"], "does not exist. Create it first"),
    (["--labels", "{folder}/y.npy"], "--labels is used only for the mixed-precision file: add --max-drop"),
])
def test_bad_mixed_precision_options_are_one_line_with_exit_code_2(outlier_files, capsys, tmp_path, argv, message):
    folder = outlier_files
    shutil.copy(folder / "model.keras", tmp_path / "model.keras")  # the default chart and file would go here
    code, out, err = _run(capsys, "analyze", tmp_path / "model.keras", "--data", folder / "x.npy",
                          *[a.format(folder=folder, tmp=tmp_path) for a in argv])
    assert code == 2
    assert message.format(folder=folder, tmp=tmp_path) in err.splitlines()[-1]
    assert "Traceback" not in err and not out
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no chart, no .tflite
