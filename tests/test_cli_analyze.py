"""`kopt analyze`: the sensitivity table, JSON and plot of a saved model, against `kopt.analysis.sensitivity`."""

import json

import keras
import numpy as np
import pytest

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
