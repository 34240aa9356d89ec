"""The `kopt` command line, checked against LiteRT and the files it writes."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from litert_truth import only_output
from tensorflow.lite.tools import flatbuffer_utils

from kopt import cli, convert


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_cnn, digits_data):
    """A digits CNN saved as .keras, and .npy test data next to it."""
    folder = tmp_path_factory.mktemp("cli")
    (x_train, y_train), (x_test, y_test) = digits_data
    model = digits_cnn
    model.save(folder / "model.keras")
    np.save(folder / "calib.npy", x_train[:200])
    np.save(folder / "x.npy", x_test)
    np.save(folder / "y.npy", y_test)
    np.save(folder / "zeros.npy", np.zeros_like(x_train[:200]))
    convert.to_tflite(model, folder / "float.tflite", quantization=None, validate=False)
    return folder, model, x_test, y_test


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_writes_a_full_int8_file_that_matches_the_model(files, capsys):
    folder, model, x_test, y_test = files
    out_path = folder / "model_int8.tflite"
    code, out, err = _run(capsys, "convert", folder / "model.keras", "-o", out_path,
                          "--representative", folder / "calib.npy", "--validation", folder / "x.npy")
    assert code == 0, err
    assert "wrote" in out and "SQNR" in out  # the validation report is printed
    assert "converting to int8 (calibrating)" in err and "done in" in err  # progress of the long step
    content = out_path.read_bytes()
    details = Interpreter(model_content=content).get_input_details()[0]
    assert details["dtype"] == np.int8
    agreement = np.mean(only_output(content, x_test).argmax(-1) == model.predict(x_test, verbose=0).argmax(-1))
    assert agreement >= 0.97


def test_convert_refuses_a_file_calibrated_on_the_wrong_data(files, capsys):
    folder, *_ = files
    out_path = folder / "wrong.tflite"  # calibrated on blank images: the ranges cannot represent real digits
    code, out, err = _run(capsys, "convert", folder / "model.keras", "-o", out_path,
                          "--representative", folder / "zeros.npy", "--validation", folder / "x.npy")
    assert code == 1
    assert "validation failed" in err and "FAIL" in out.upper()
    assert not out_path.exists() and not list(folder.glob(".kopt-*"))


def test_float16_conversion_and_eval_agree_with_litert(files, capsys):
    folder, model, x_test, y_test = files
    out_path = folder / "model_f16.tflite"
    code, _, err = _run(capsys, "convert", folder / "model.keras", "-o", out_path, "--quantization", "float16",
                        "--validation", folder / "x.npy")
    assert code == 0, err
    code, out, _ = _run(capsys, "eval", out_path, "--x", folder / "x.npy", "--y", folder / "y.npy", "--json")
    assert code == 0
    result = json.loads(out)
    truth = float(np.mean(only_output(out_path.read_bytes(), x_test).argmax(-1) == y_test))
    assert result["accuracy"] == pytest.approx(truth) and result["samples"] == len(x_test)


def test_inspect_and_bench(files, capsys):
    folder, *_ = files
    path = folder / "inspected.tflite"
    assert _run(capsys, "convert", folder / "model.keras", "-o", path, "--representative",
                folder / "calib.npy")[0] == 0
    code, out, _ = _run(capsys, "inspect", path, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["size_bytes"] == path.stat().st_size
    interpreter = Interpreter(model_content=path.read_bytes())
    (scale, zero), = [d["quantization"] for d in interpreter.get_input_details()]
    assert info["inputs"][0]["dtype"] == "int8"
    assert info["inputs"][0]["scales"][0] == pytest.approx(scale) and info["inputs"][0]["zero_points"][0] == zero
    code, out, _ = _run(capsys, "inspect", path)
    assert code == 0 and "CONV_2D" in out and "full integer" in out
    code, out, _ = _run(capsys, "inspect", path, "--tensors")
    table = out.split("full integer\n", 1)[1].splitlines()
    tensors = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes())).subgraphs[0].tensors
    assert code == 0 and len(table) == 1 + len(tensors)  # a header, then every tensor of the file
    assert f"scale {scale:.6g}, zero point {zero}" in out

    code, out, err = _run(capsys, "bench", path, "--runs", 20, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["runs"] == 20 and result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]


def test_inspect_weights_counts_the_distinct_int8_values_of_a_clustered_model(files, capsys, digits_data):
    from kopt import clustering

    folder, model, *_ = files
    (x_train, y_train), _ = digits_data
    clustered = clustering.strip_clustering(clustering.cluster_weights(model, number_of_clusters=8))
    clustered.save(folder / "clustered.keras")
    path = folder / "clustered_int8.tflite"
    assert _run(capsys, "convert", folder / "clustered.keras", "-o", path, "--representative",
                folder / "calib.npy")[0] == 0
    code, out, _ = _run(capsys, "inspect", path, "--json")
    assert code == 0
    weights = json.loads(out)["weights"]
    # The truth: the constant weight tensors as LiteRT reads them.
    interpreter = Interpreter(model_content=path.read_bytes())
    by_name = {d["name"]: d for d in interpreter.get_tensor_details()}
    assert [w["op"] for w in weights] == ["CONV_2D", "CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    for w in weights:
        values = interpreter.get_tensor(by_name[w["name"]]["index"])
        assert w["unique_values"] == len(np.unique(values)) and w["zeros"] == int(np.sum(values == 0))
        if w["unique_per_channel"] is not None:  # per-channel scales: 8 float values, <= 8 int8 values a channel
            assert w["unique_per_channel"] == max(len(np.unique(values[c])) for c in range(values.shape[0])) <= 8
        else:
            assert w["unique_values"] <= 8
    # The unclustered model's file has many more.
    code, out, _ = _run(capsys, "inspect", folder / "float.tflite", "--json")
    assert min(w["unique_values"] for w in json.loads(out)["weights"]) > 100
    code, out, _ = _run(capsys, "inspect", path, "--weights")
    assert code == 0 and "4 weight tensors: " in out and "per channel" in out.splitlines()[-5]


def test_onnx_export_and_inspect_agree_with_onnxruntime(files, capsys):
    import onnx
    import onnxruntime

    folder, model, x_test, _ = files
    out_path = folder / "model.onnx"
    code, out, err = _run(capsys, "onnx", folder / "model.keras", "-o", out_path, "--validation", folder / "x.npy")
    assert code == 0, err
    assert "wrote" in out and "exporting to ONNX" in err
    session = onnxruntime.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x_test})[0]
    np.testing.assert_allclose(logits, model.predict(x_test, verbose=0), atol=1e-4)
    code, out, _ = _run(capsys, "inspect", out_path, "--json")
    assert code == 0
    ops = [node.op_type for node in onnx.load(str(out_path)).graph.node]
    assert json.loads(out)["op_counts"] == {op: ops.count(op) for op in set(ops)}


@pytest.mark.parametrize("argv, message", [
    (["convert", "missing.keras", "-o", "out.tflite"], "MODEL 'missing.keras': no such file"),
    (["convert", "{folder}/model.keras", "-o", "no/such/folder/out.tflite"], "does not exist. Create it first"),
    (["convert", "{folder}/model.keras", "-o", "{folder}/out.onnx"], "must end in .tflite"),
    (["convert", "{folder}/model.keras", "-o", "{folder}/out.tflite", "--representative", "{folder}/nope.npy"],
     "--representative '{folder}/nope.npy': no such file"),
    (["eval", "{folder}/model.keras", "--x", "{folder}/x.npy", "--y", "{folder}/y.npy"], "expected a .tflite"),
    (["eval", "{folder}/float.tflite", "--x", "{folder}/x.npy", "--y", "{folder}/calib.npy"],
     "--x has 450 samples but --y has 200"),
    (["convert", "{folder}/model.keras", "-o", "{folder}/out.tflite", "--representative", "{folder}/model.keras"],
     "is not a NumPy .npy/.npz file"),
])
def test_bad_input_is_one_line_with_exit_code_2(files, capsys, argv, message):
    folder = files[0]
    code, out, err = _run(capsys, *[a.format(folder=folder) for a in argv])
    assert code == 2
    assert message.format(folder=folder) in err
    assert "Traceback" not in err and len(err.strip().splitlines()[-1]) > 0
    assert not (folder / "out.tflite").exists()


def test_exit_codes_follow_the_error_type(files, capsys, monkeypatch):
    """A model the converter cannot convert (4) is told apart from bad input (2) by type, whatever the message."""
    from kopt.errors import ConversionError

    folder = files[0]

    def refuse(*args, **kwargs):
        raise ConversionError("does not match the Keras model (a message that reads like a mismatch)",
                              ops=["SIN"], layers=["wave"])

    monkeypatch.setattr(convert, "to_tflite", refuse)
    code, _, err = _run(capsys, "convert", folder / "model.keras", "-o", folder / "out.tflite")
    assert code == 4 and "cannot convert" in err
    monkeypatch.setattr(convert, "to_tflite", lambda *a, **k: (_ for _ in ()).throw(ValueError("cannot convert")))
    code, _, err = _run(capsys, "convert", folder / "model.keras", "-o", folder / "out.tflite")
    assert code == 2
    assert not (folder / "out.tflite").exists()


def test_verbose_shows_the_traceback(capsys):
    code, _, err = _run(capsys, "inspect", "missing.tflite", "--verbose")
    assert code == 2 and "Traceback" in err


def test_every_command_documents_its_options_with_an_example():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) == {"demo", "convert", "inspect", "bench", "eval", "onnx", "analyze"}
    for name, sub in commands.items():
        text = sub.format_help()
        assert f"Example:\n  kopt {name}" in text, name
        for action in sub._actions:
            assert action.help, f"kopt {name} {action.option_strings or action.dest} has no help"


def test_version_and_argparse_errors_in_a_fresh_process():
    version = subprocess.run([sys.executable, "-m", "kopt.cli", "--version"], capture_output=True, text=True)
    from importlib.metadata import version as installed

    assert version.returncode == 0 and version.stdout.strip() == f"kopt {installed('kopt-keras')}"
    bad = subprocess.run([sys.executable, "-m", "kopt.cli", "convert", "m.keras", "-o", "o.tflite",
                          "--quantization", "int4"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--quantization: invalid choice: 'int4'" in bad.stderr


def test_a_folder_of_images_is_resized_to_the_model_input(files, tmp_path):
    folder, model, x_test, _ = files
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.round(x_test[:5] * 255).astype("uint8")
    for i, image in enumerate(pixels):
        keras.utils.save_img(images / f"{i}.png", image, scale=False)
    (images / "notes.txt").write_text("not an image")
    loaded = cli._load_data(str(images), "--representative", model)
    np.testing.assert_array_equal(loaded, pixels.astype("float32"))  # 0-255, the file's own pixel values
    big = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    assert cli._load_data(str(images), "--representative", big).shape == (5, 16, 16, 3)  # resized, grey -> RGB
