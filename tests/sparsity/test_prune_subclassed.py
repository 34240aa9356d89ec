"""Pruning subclassed models: every kernel the model holds gets a mask; strip_pruning gives the model's class back."""

import keras
import numpy as np
import pytest

from kopt import sparsity
from kopt.sparsity.wrapper import PruneLowMagnitude

L = keras.layers


@keras.saving.register_keras_serializable(package="kopt_tests")
class Tagger(keras.Model):
    """Embedding -> a list of Dense blocks with residual adds -> a head: a subclassed text model."""

    def __init__(self, vocabulary=50, width=16, depth=2, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary, self.width, self.depth = vocabulary, width, depth
        self.embedding = L.Embedding(vocabulary, width)
        self.blocks = [L.Dense(width, activation="relu") for _ in range(depth)]
        self.norm = L.LayerNormalization()
        self.head = L.Dense(3)

    def call(self, ids):
        x = self.embedding(ids)
        for block in self.blocks:
            x = x + block(x)
        return self.head(keras.ops.mean(self.norm(x), axis=1))

    def get_config(self):
        return {**super().get_config(), "vocabulary": self.vocabulary, "width": self.width, "depth": self.depth}


def _data(n=256):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (n, 12)).astype("int32")
    return ids, (ids[:, 0] % 3).astype("int32")


def _built():
    keras.utils.set_random_seed(0)
    model = Tagger()
    ids, _ = _data(4)
    model(ids)
    return model


SCHEDULE = dict(initial_sparsity=0.0, final_sparsity=0.75, begin_step=0, end_step=8, frequency=2)


def _fit(model, epochs=2):
    ids, labels = _data()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(ids, labels, epochs=epochs, batch_size=64, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    return model


def test_every_kernel_of_a_subclassed_model_is_pruned_and_strip_gives_its_class_back(tmp_path):
    model = _built()
    pruned = sparsity.prune_low_magnitude(model, sparsity.PolynomialDecay(**SCHEDULE))
    (wrapper,) = [layer for layer in pruned.layers if isinstance(layer, PruneLowMagnitude)]
    assert wrapper.layer is not model  # the user's model is copied, not changed
    assert pruned.inputs[0].dtype == "int32"  # token ids stay integer
    copy = wrapper.layer
    assert sorted(wrapper.weight_labels) == sorted(
        [f"{copy.embedding.name}/embeddings", f"{copy.head.name}/kernel"] + [f"{d.name}/kernel" for d in copy.blocks])

    _fit(pruned)
    by_kernel = sparsity.get_sparsity(pruned)
    assert len(by_kernel) == 4 and all(abs(value - 0.75) < 0.01 for value in by_kernel.values())

    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)
    ids, _ = _data(32)
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), pruned.predict(ids, verbose=0))

    stripped = sparsity.strip_pruning(pruned)
    assert type(stripped) is Tagger
    assert not any(isinstance(layer, PruneLowMagnitude) for layer in stripped._flatten_layers())
    np.testing.assert_allclose(stripped(ids), pruned(ids), atol=1e-6)
    assert abs(float(np.mean(keras.ops.convert_to_numpy(stripped.head.kernel) == 0)) - 0.75) < 0.01
    assert float(np.mean(keras.ops.convert_to_numpy(stripped.norm.gamma) == 0)) == 0  # norms stay dense


def test_a_subclassed_model_prunes_as_the_same_functional_model():
    """The same layers and weights in a Functional graph, pruned by kopt's per-layer wrappers (the path checked
    against tfmot in test_tfmot_models.py), end with the same masks."""
    model = _built()
    ids = keras.Input((12,), dtype="int32")
    x = model.embedding(ids)
    for block in model.blocks:
        x = L.Add()([x, block(x)])
    functional = keras.Model(ids, model.head(keras.ops.mean(model.norm(x), axis=1)))

    names = [model.embedding.name, model.head.name] + [block.name for block in model.blocks]
    zeros = []
    for candidate in (model, functional):
        keras.utils.set_random_seed(1)
        stripped = sparsity.strip_pruning(
            _fit(sparsity.prune_low_magnitude(candidate, sparsity.PolynomialDecay(**SCHEDULE)), epochs=1))
        layers = ([stripped.embedding, stripped.head, *stripped.blocks] if type(stripped) is Tagger
                  else [stripped.get_layer(name) for name in names])
        zeros.append([keras.ops.convert_to_numpy(layer.weights[0]) == 0 for layer in layers])
    for subclassed, graph in zip(*zeros):
        assert 0.3 < subclassed.mean() < 0.8
        np.testing.assert_array_equal(subclassed, graph)


def test_an_unbuilt_subclassed_model_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="to_prune.*no recorded input shape.*call it once"):
        sparsity.prune_low_magnitude(Tagger())
