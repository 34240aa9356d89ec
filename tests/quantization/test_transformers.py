"""QAT of transformers to full-int8 TFLite: a Functional transformer on token ids and KerasHub's BERT.

Files are read and run by LiteRT's interpreter (tests/litert_truth.py), weights compared with TensorFlow's
FakeQuant of the QAT model's kernels and ranges.
"""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from kopt import convert, quantization, sparsity
from kopt.experimental.combine import Default8BitPrunePreserveQuantizeScheme
from tests.litert_truth import litert, np_sqnr

L = keras.layers
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tokens(n, vocabulary=64, length=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocabulary, (n, length)).astype("int32")
    return x, (x[:, 0] > vocabulary // 2).astype("int32")  # the label is in the first token


def functional_transformer():
    keras.utils.set_random_seed(0)
    ids = keras.Input((16,), dtype="int32", name="ids")
    h = L.Embedding(64, 32, name="embedding")(ids)
    h = L.LayerNormalization(name="ln_1")(h + L.MultiHeadAttention(2, 16, name="mha")(h, h))
    mlp = L.Dense(32, name="mlp_out")(L.Dense(64, activation="gelu", name="mlp_in")(h))
    h = L.LayerNormalization(name="ln_2")(h + mlp)
    return keras.Model(ids, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(h)))


@pytest.fixture(scope="module")
def qat_transformer():
    x, y = tokens(768)
    model = functional_transformer()
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(x[:512], y[:512], batch_size=32, epochs=6, verbose=0)
    qat = quantization.quantize_model(model)
    qat.compile(keras.optimizers.Adam(1e-4), LOSS, metrics=["accuracy"])
    qat.fit(x[:512], y[:512], batch_size=32, epochs=1, verbose=0)
    return qat, x, y


def tensors(content):
    return Interpreter(model_content=bytes(content)).get_tensor_details()


def test_transformer_qat_converts_to_full_int8_with_integer_token_ids(qat_transformer):
    qat, x, y = qat_transformer
    # Before: QAT -> int8 failed on CAST ops from a QuantizeLayer on the int32 ids.
    assert not any(type(layer).__name__ == "QuantizeLayer" and layer.name.startswith("quant_ids")
                   for layer in qat.layers)
    result = convert.to_tflite(qat, representative_data=x[:200], validation_data=x[512:])
    details = Interpreter(model_content=bytes(result)).get_signature_runner().get_input_details()
    assert details["ids"]["dtype"] == np.int32 and not details["ids"]["quantization"][0]
    ops = convert.inspect(result).op_counts
    assert "CAST" not in ops and "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    table = [t for t in tensors(result) if tuple(t["shape"]) == (64, 32)]
    assert table and all(t["dtype"] == np.int8 for t in table)  # GATHER from an int8 embedding table
    (got,) = litert(result, {"ids": x[512:]}).values()
    reference = qat.predict(x[512:], verbose=0)
    assert np_sqnr(reference, got) > 20  # measured 32.1 dB
    assert np.mean(got.argmax(-1) == y[512:]) >= qat.evaluate(x[512:], y[512:], verbose=0)[1] - 0.02


def test_attention_kernels_are_fake_quantized_as_the_file_stores_them(qat_transformer):
    qat, x, _ = qat_transformer
    wrapper = qat.get_layer("quant_mha")
    assert isinstance(wrapper.quantize_config, quantization.SublayerQuantizeConfig)
    ranges = {w.path.rsplit("/", 1)[-1]: keras.ops.convert_to_numpy(w) for w in wrapper.weights}
    result = convert.to_tflite(qat, representative_data=x[:100], validate=False)
    stored = [t for t in tensors(result) if t["dtype"] == np.int8 and len(t["shape"]) == 2]
    interpreter = Interpreter(model_content=bytes(result))
    interpreter.allocate_tensors()
    dequantized = []
    for t in stored:
        try:
            q = interpreter.get_tensor(t["index"]).astype(np.float64)
        except ValueError:  # an activation (no data before a run), not a constant
            continue
        scales = t["quantization_parameters"]["scales"]
        dequantized.append(q * (scales.reshape(-1, 1) if scales.size > 1 else scales[0]))
    for name in ("query", "key", "value"):
        dense = getattr(wrapper.layer, f"_{name}_dense")
        kernel = keras.ops.convert_to_numpy(dense.kernel)  # (32, heads, head size)
        low, high = ranges[f"{name}_kernel_min"], ranges[f"{name}_kernel_max"]
        fake = tf.quantization.fake_quant_with_min_max_vars(kernel, low, high, num_bits=8, narrow_range=True).numpy()
        want = fake.reshape(32, -1).T  # FULLY_CONNECTED weights are (out, in)
        assert any(d.shape == want.shape and np.allclose(d, want, atol=1e-6) for d in dequantized), name


def test_without_representative_data_the_error_names_the_tensors_and_the_fix(qat_transformer):
    qat, _, _ = qat_transformer
    with pytest.raises(ValueError, match="representative_data") as error:
        convert.to_tflite(qat, validate=False)
    assert "mha" in str(error.value) and "more" in str(error.value)


def bert_classifier():
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=16, dropout=0.0)
    return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2, preprocessor=None, dropout=0.0)


def bert_inputs(ids):
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}


@pytest.mark.slow  # a BERT pruned, QAT-trained and converted (slow tier, run by CI)
def test_pruned_bert_quantizes_to_full_int8_and_keeps_its_zeros(tmp_path, caplog):
    x, y = tokens(640)
    data = bert_inputs(x)
    train = {k: v[:512] for k, v in data.items()}
    held = {k: v[512:] for k, v in data.items()}
    pruned = sparsity.prune_low_magnitude(bert_classifier(), sparsity.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile(keras.optimizers.Adam(3e-3), LOSS)
    pruned.fit(train, y[:512], batch_size=32, epochs=3, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    with caplog.at_level("INFO", logger="kopt"):
        qat = quantization.quantize_model(sparsity.strip_pruning(pruned),
                                          quantize_scheme=Default8BitPrunePreserveQuantizeScheme())
    assert "position_embedding (PositionEmbedding" in caplog.text and "QuantizeConfig" in caplog.text
    encoder = qat.get_layer("bert_backbone").get_layer("quant_transformer_layer_0")
    assert isinstance(encoder.quantize_config, quantization.SublayerQuantizeConfig)
    assert len(encoder.quantize_config.get_weights_and_quantizers(encoder.layer)) == 6  # q, k, v, o, 2 Dense
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    qat.fit(train, y[:512], batch_size=32, epochs=1, verbose=0)
    sparsities = sparsity.get_sparsity(qat)  # before: {} for a QAT model
    assert len(sparsities) == 16 and all(v >= 0.5 for v in sparsities.values())

    qat.save(tmp_path / "qat_bert.keras")
    loaded = keras.saving.load_model(tmp_path / "qat_bert.keras")
    np.testing.assert_array_equal(loaded.predict(held, verbose=0), qat.predict(held, verbose=0))

    result = convert.to_tflite(loaded, representative_data=train, validation_data=held)
    ops = convert.inspect(result).op_counts
    assert "NEG" not in ops and "DEQUANTIZE" not in ops  # LayerNormalization inside TransformerEncoder
    got = litert(result, held)
    (got,) = got.values()
    assert np_sqnr(qat.predict(held, verbose=0), got) > 20  # measured 46.9 dB for the unpruned model


def test_a_model_that_takes_strings_gets_a_clear_error(tmp_path):
    text = keras.Input((1,), dtype="string", name="text")
    ids = L.TextVectorization(vocabulary=["sport", "music"], output_sequence_length=4)(text)
    model = keras.Model(text, L.Dense(2)(L.GlobalAveragePooling1D()(L.Embedding(4, 8)(ids))))
    for call in (lambda: quantization.quantize_model(model),
                 lambda: convert.to_tflite(model, tmp_path / "m.tflite", quantization=None),
                 lambda: convert.to_onnx(model, tmp_path / "m.onnx")):
        with pytest.raises(ValueError, match=r"takes strings \(inputs \['text'\]\).*preprocessor=None"):
            call()
    assert not list(tmp_path.iterdir())


def test_benchmark_of_a_file_with_an_open_sequence_length(tmp_path, capsys):
    from kopt import cli

    keras.utils.set_random_seed(0)
    ids = keras.Input((None,), dtype="int32", name="ids")
    model = keras.Model(ids, L.Dense(2)(L.GlobalAveragePooling1D()(L.Embedding(64, 256)(ids))))
    path = tmp_path / "open_length.tflite"
    convert.to_tflite(model, path, quantization=None, validation_data=tokens(32)[0])
    # Before: timed silently at sequence length 1.
    with pytest.raises(ValueError, match=r"Input 'ids'.*input_shapes=\{'ids'"):
        convert.benchmark(path, runs=2)
    assert convert.benchmark(path, runs=2, input_shapes={"ids": (128,)}).runs == 2
    with pytest.raises(ValueError, match=r"names inputs the file does not have: \['tokens'\]"):
        convert.benchmark(path, runs=2, input_shapes={"tokens": (128,)})
    assert cli.main(["bench", str(path), "--runs", "2", "--input-shape", "ids=16", "--json"]) == 0
    assert '"median_ms"' in capsys.readouterr().out
    assert cli.main(["bench", str(path), "--runs", "2"]) == 2
    assert "input_shapes" in capsys.readouterr().err
