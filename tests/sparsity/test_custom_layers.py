"""Pruning inside custom layers: KerasHub's BERT and ViT at small random configs (nothing is downloaded).

The tfmot oracle for a custom layer's sublayers is in test_tfmot_models.py (`custom_block`); here the
kernels reached are checked against the names KerasHub gives them, and saving, resuming and stripping
against the model's own outputs.
"""

import logging

import keras
import keras_hub
import numpy as np
import pytest

from kopt import sparsity
from kopt._keras.sublayers import all_sublayers

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
SCHEDULE = sparsity.ConstantSparsity(0.5, 0, frequency=1)

# Every Dense / EinsumDense / Embedding kernel of a 2-layer BertTextClassifier, by KerasHub's layer names.
BERT_KERNELS = (
    {f"transformer_layer_{i}/self_attention_layer/{n}/kernel" for i in range(2)
     for n in ("query", "key", "value", "attention_output")}
    | {f"transformer_layer_{i}/feedforward_{n}_dense/kernel" for i in range(2) for n in ("intermediate", "output")}
    | {"token_embedding/embeddings", "segment_embedding/embeddings", "pooled_dense/kernel", "logits/kernel"}
)


def bert_classifier():
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=12, dropout=0.0)
    return keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2, preprocessor=None, dropout=0.0)


def token_data(n=64, length=12, seed=0):
    rng = np.random.default_rng(seed)
    x = {"token_ids": rng.integers(1, 64, (n, length)).astype("int32"),
         "segment_ids": np.zeros((n, length), "int32"),
         "padding_mask": np.ones((n, length), "int32")}
    return x, (x["token_ids"][:, 0] > 32).astype("int32")


def fit(model, x, y, epochs=1):
    model.fit(x, y, batch_size=16, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[sparsity.UpdatePruningStep()])


def kopt_classes(model):
    return {type(layer).__name__ for layer in all_sublayers(model) if type(layer).__module__.startswith("kopt")}


@pytest.fixture(scope="module")
def pruned_bert():
    pruned = sparsity.prune_low_magnitude(bert_classifier(), pruning_schedule=SCHEDULE)
    pruned.compile(keras.optimizers.Adam(1e-3), LOSS)
    x, y = token_data()
    fit(pruned, x, y, epochs=2)
    return pruned, x, y


def test_bert_kernels_inside_transformer_layers_are_pruned(pruned_bert, caplog):
    pruned, _, _ = pruned_bert
    sparsities = sparsity.get_sparsity(pruned)
    assert set(sparsities) == BERT_KERNELS  # was 4 of 16: the transformer layers were left dense
    for name, value in sparsities.items():
        assert value == pytest.approx(0.5, abs=0.02), name
    with caplog.at_level(logging.INFO, logger="kopt"):
        sparsity.prune_low_magnitude(bert_classifier())
    assert "position_embedding (PositionEmbedding)" in caplog.text and "PrunableLayer" in caplog.text


def test_bert_saves_loads_and_resumes(pruned_bert, tmp_path):
    pruned, x, y = pruned_bert
    path = tmp_path / "pruned_bert.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)  # keras_hub and kopt imported, no custom_objects
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))
    # Resuming: one more epoch on the loaded model equals one more epoch on the original.
    twin = keras.saving.load_model(path)
    fit(loaded, x, y)
    fit(twin, x, y)
    steps = [w for w in loaded.weights if w.path.endswith("pruning_step")]
    assert steps and all(int(keras.ops.convert_to_numpy(s)) == 2 * 4 + 4 for s in steps)  # 3 epochs of 4 steps
    for a, b in zip(loaded.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bert_strips_to_keras_hub_classes_with_the_zeros(pruned_bert):
    pruned, x, _ = pruned_bert
    stripped = sparsity.strip_pruning(pruned)
    assert not kopt_classes(stripped)
    classes = {type(layer).__name__ for layer in all_sublayers(stripped)}
    assert {"TransformerEncoder", "ReversibleEmbedding", "PositionEmbedding"} <= classes
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
    assert sparsity.get_sparsity(stripped) == sparsity.get_sparsity(pruned)


def test_vit_whose_layer_config_does_not_round_trip_prunes_saves_and_strips(tmp_path):
    keras.utils.set_random_seed(2)
    vit = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=1, num_heads=2,
                                       hidden_dim=16, mlp_dim=32)
    patching = vit.get_layer("vit_patching_and_embedding")
    with pytest.raises(TypeError):  # KerasHub's own config round trip fails (it crashed kopt's rewrite before)
        type(patching).from_config(patching.get_config())
    pruned = sparsity.prune_low_magnitude(vit, pruning_schedule=SCHEDULE)
    names = set(sparsity.get_sparsity(pruned))
    assert {"vit_patching_and_embedding/patch_embedding/kernel", "vit_encoder/transformer_block_1/mha/query/kernel",
            "vit_encoder/transformer_block_1/mlp/dense_1/kernel"} <= names
    x = np.random.default_rng(0).random((8, 16, 16, 3)).astype("float32")
    pruned.compile("adam", "mse")
    pruned.fit(x, np.zeros((8, 5, 16)), verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    assert all(v == pytest.approx(0.5, abs=0.02) for v in sparsity.get_sparsity(pruned).values())
    pruned.save(tmp_path / "vit.keras")
    loaded = keras.saving.load_model(tmp_path / "vit.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), pruned.predict(x, verbose=0))
    stripped = sparsity.strip_pruning(loaded)
    assert not kopt_classes(stripped)
    np.testing.assert_allclose(stripped.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6)
