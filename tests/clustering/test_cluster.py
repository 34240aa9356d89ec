"""`cluster_weights` / `strip_clustering` on real architectures, saving and resuming, gradients, errors."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from kopt import clustering, sparsity

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _unique(variable):
    return len(np.unique(keras.ops.convert_to_numpy(variable)))


def _kernels(model):
    return {layer.name: layer.kernel for layer in model.layers if hasattr(layer, "kernel")}


def test_each_kernel_has_at_most_n_values_after_fine_tuning(digits_cnn, digits_data):
    (x, y), _ = digits_data
    clustered = clustering.cluster_weights(digits_cnn, number_of_clusters=6)
    clustered.compile(keras.optimizers.Adam(1e-4), LOSS)
    clustered.fit(x[:256], y[:256], epochs=1, verbose=0)
    final = clustering.strip_clustering(clustered)
    assert {type(layer).__module__.split(".")[0] for layer in final.layers} == {"keras"}
    counts = [_unique(k) for k in _kernels(final).values()]
    assert counts == [6, 6, 6, 6]
    # The stripped model computes what the clustered one computes.
    np.testing.assert_allclose(final.predict(x[:64], verbose=0), clustered.predict(x[:64], verbose=0), atol=1e-5)
    # The model passed in is untouched.
    assert _unique(digits_cnn.layers[0].kernel) > 100


def test_centroids_train_on_the_sum_of_their_members_gradients():
    """tfmot's gradients, against a NumPy formula: d centroid = sum of d weight over its members; d weight = d out."""
    layer = keras.layers.Dense(3, use_bias=False)
    layer.build((None, 4))
    kernel = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
    layer.kernel.assign(kernel)
    wrapper = clustering.ClusterWeights(layer, number_of_clusters=3, cluster_centroids_init="linear")
    wrapper.build((None, 4))
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    upstream = np.random.default_rng(2).normal(size=(5, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(wrapper(x) * upstream)
    d_centroids, d_kernel = tape.gradient(loss, [wrapper.cluster_centroids[0], layer.kernel])
    centroids = wrapper.cluster_centroids[0].numpy()
    members = np.argmin(np.abs(kernel[..., None] - centroids), axis=-1)
    d_clustered = x.T @ upstream  # d loss / d kernel of a plain Dense
    expected = np.array([d_clustered[members == c].sum() for c in range(3)])
    np.testing.assert_allclose(d_centroids.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(d_kernel.numpy(), d_clustered, rtol=1e-5)  # straight through to the weights
    np.testing.assert_allclose(wrapper(x).numpy(), x @ centroids[members], rtol=1e-5)


def test_save_load_and_resume(tmp_path, digits_cnn, digits_data):
    (x, y), _ = digits_data
    clustered = clustering.cluster_weights(digits_cnn, number_of_clusters=8)
    clustered.compile(keras.optimizers.Adam(1e-4), LOSS)
    clustered.fit(x[:128], y[:128], epochs=1, verbose=0)
    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = keras.models.load_model(path)  # no scope needed
    with clustering.cluster_scope():
        keras.models.load_model(path)  # tfmot's way works too
    np.testing.assert_array_equal(loaded.predict(x[:32], verbose=0), clustered.predict(x[:32], verbose=0))
    for mine, theirs in zip(clustered.weights, loaded.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    # Resuming continues from the saved centroids and optimizer state: one more epoch gives the same weights.
    clustered.fit(x[128:256], y[128:256], epochs=1, verbose=0, shuffle=False)
    loaded.fit(x[128:256], y[128:256], epochs=1, verbose=0, shuffle=False)
    for mine, theirs in zip(clustered.weights, loaded.weights):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-6)


def test_preserve_sparsity_keeps_a_pruned_models_zeros(digits_cnn, digits_data):
    (x, y), _ = digits_data
    pruned = sparsity.prune_low_magnitude(digits_cnn, pruning_schedule=sparsity.ConstantSparsity(0.6, 0, frequency=1))
    pruned.compile("adam", LOSS)
    pruned.fit(x[:64], y[:64], epochs=1, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    pruned = sparsity.strip_pruning(pruned)
    zeros_before = {name: keras.ops.convert_to_numpy(k) == 0 for name, k in _kernels(pruned).items()}

    def fine_tuned(preserve):
        model = clustering.experimental.cluster_weights(pruned, 8, preserve_sparsity=preserve)
        model.compile(keras.optimizers.Adam(1e-3), LOSS)
        model.fit(x[:512], y[:512], epochs=1, verbose=0)
        return {name: keras.ops.convert_to_numpy(k) for name, k in _kernels(clustering.strip_clustering(model)).items()}

    kept = fine_tuned(True)
    for name, was_zero in zeros_before.items():
        assert np.all(kept[name][was_zero] == 0), name
        assert _unique(kept[name]) <= 8
    # Without preserve_sparsity the zeros do not survive: the check above can fail.
    lost = fine_tuned(False)
    assert any(np.any(lost[name][was_zero] != 0) for name, was_zero in zeros_before.items())


def test_per_channel_clusters_each_output_channel():
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3), keras.layers.Flatten(),
                              keras.layers.Dense(4)])
    clustered = clustering.experimental.cluster_weights(model, 4, cluster_per_channel=True)
    conv = clustered.layers[0]
    assert tuple(conv.cluster_centroids[0].shape) == (6, 4)
    assert tuple(clustered.layers[2].cluster_centroids[0].shape) == (4,)  # Dense: per channel ignored, as tfmot
    kernel = keras.ops.convert_to_numpy(clustering.strip_clustering(clustered).layers[0].kernel)
    assert [len(np.unique(kernel[..., c])) for c in range(6)] == [4] * 6
    assert len(np.unique(kernel)) > 4


def test_real_architectures_cluster_and_strip(caplog):
    """MobileNetV2 (depthwise convs stay unclustered, as in tfmot), an LSTM, attention and embeddings."""
    keras.utils.set_random_seed(0)
    mobilenet = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10)
    with caplog.at_level(logging.INFO, logger="kopt"):
        clustered = clustering.cluster_weights(mobilenet, number_of_clusters=16)
    wrapped = [layer for layer in clustered.layers if isinstance(layer, clustering.ClusterWeights)]
    assert {type(w.layer).__name__ for w in wrapped} == {"Conv2D", "Dense"}
    assert len(wrapped) == sum(isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
                               for layer in mobilenet.layers) - _too_small(mobilenet, 16)
    assert "DepthwiseConv2D" in caplog.text
    stripped = clustering.strip_clustering(clustered)
    for layer in stripped.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer.kernel.shape.num_elements() > 16:
            assert _unique(layer.kernel) <= 16, layer.name
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            assert _unique(layer.kernel) > 16

    inputs = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(50, 16)(inputs)
    h = keras.layers.MultiHeadAttention(2, 8)(h, h)
    h = keras.layers.LSTM(8)(h)
    sequence = keras.Model(inputs, keras.layers.Dense(2)(h))
    clustered = clustering.cluster_weights(sequence, number_of_clusters=5)
    clustered.compile("adam", LOSS)
    clustered.fit(np.random.randint(0, 50, (32, 6)), np.random.randint(0, 2, 32), verbose=0)
    stripped = clustering.strip_clustering(clustered)
    attention = stripped.layers[2]
    lstm = stripped.layers[3]
    for variable in (stripped.layers[1].embeddings, attention.query_dense.kernel, attention.output_dense.kernel,
                     lstm.cell.kernel, lstm.cell.recurrent_kernel):
        assert _unique(variable) <= 5


def _too_small(model, clusters):
    return sum(isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
               and layer.kernel.shape.num_elements() <= clusters for layer in model.layers)


def test_keras_hub_transformer_blocks_are_clustered_through_their_sublayers():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(1)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=16,
                                             intermediate_dim=32, max_sequence_length=12, dropout=0.0)
    model = keras_hub.models.BertTextClassifier(backbone=backbone, num_classes=2, preprocessor=None, dropout=0.0)
    clustered = clustering.cluster_weights(model, number_of_clusters=4)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1, 64, (32, 12)).astype("int32"), "segment_ids": np.zeros((32, 12), "int32"),
         "padding_mask": np.ones((32, 12), "int32")}
    clustered.compile("adam", LOSS)
    clustered.fit(x, rng.integers(0, 2, 32), verbose=0)
    stripped = clustering.strip_clustering(clustered)
    from kopt._keras.sublayers import all_sublayers

    dense_kernels = [layer.kernel for layer in all_sublayers(stripped)
                     if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))]
    assert len(dense_kernels) >= 6  # q, k, v, output, two feed-forward, pooled, logits
    assert max(_unique(k) for k in dense_kernels) <= 4
    np.testing.assert_allclose(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-5)


def test_clustering_summaries_write_histograms(tmp_path, digits_cnn, digits_data):
    (x, y), _ = digits_data
    clustered = clustering.cluster_weights(digits_cnn, number_of_clusters=8)
    clustered.compile(keras.optimizers.Adam(1e-4), LOSS)
    clustered.fit(x[:64], y[:64], epochs=2, verbose=0,
                  callbacks=[clustering.ClusteringSummaries(log_dir=str(tmp_path), cluster_update_freq="epoch")])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "clustering"), size_guidance={"tensors": 0}).Reload()
    tags = events.Tags()["tensors"]
    assert any("cluster_centroids_kernel" in tag for tag in tags)
    unique = [t for t in tags if t.endswith("/kernel/unique_values")]
    assert len(unique) == 4
    assert all(float(tf.make_ndarray(e.tensor_proto)) == 8 for t in unique for e in events.Tensors(t))


def test_bad_arguments_name_the_argument_and_the_fix():
    dense = keras.layers.Dense(4)
    with pytest.raises(ValueError, match="`number_of_clusters` must be at least 2"):
        clustering.cluster_weights(dense, number_of_clusters=1)
    with pytest.raises(ValueError, match="`number_of_clusters` must be an integer"):
        clustering.cluster_weights(dense, number_of_clusters=4.0)
    with pytest.raises(ValueError, match="at least 3 with preserve_sparsity"):
        clustering.experimental.cluster_weights(dense, 2, preserve_sparsity=True)
    with pytest.raises(ValueError, match="CentroidInitialization.KMEANS_PLUS_PLUS"):
        clustering.cluster_weights(dense, 4, cluster_centroids_init="kmeans")
    with pytest.raises(ValueError, match="ClusterableLayer"):
        clustering.cluster_weights(keras.layers.BatchNormalization(), 4)
    with pytest.raises(ValueError, match="already clustered"):
        clustering.ClusterWeights(clustering.cluster_weights(dense, 4), 4)
    with pytest.raises(ValueError, match="`to_cluster` must be"):
        clustering.cluster_weights("model.keras", 4)


def test_clusterable_layer_says_what_to_cluster():
    class HalfClustered(keras.layers.Layer, clustering.ClusterableLayer):
        def build(self, shape):
            self.a = self.add_weight(shape=(shape[-1], 8), initializer="random_normal")
            self.b = self.add_weight(shape=(shape[-1], 8), initializer="random_normal")

        def call(self, x):
            return x @ self.a + x @ self.b

        def get_clusterable_weights(self):
            return [("a", self.a)]

    model = keras.Sequential([keras.Input((8,)), HalfClustered()])
    clustered = clustering.cluster_weights(model, 3)
    wrapper = clustered.layers[0]
    assert wrapper.weight_labels == ["a"]
    values = dict(zip(["a"], [v for _, v in wrapper.effective_weights()]))
    assert _unique(values["a"]) <= 3


def test_nested_models_are_clustered_and_stripped_back():
    inner = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, activation="relu")], name="inner")
    inputs = keras.Input((8,))
    outer = keras.Model(inputs, keras.layers.Dense(3)(inner(inputs)))
    clustered = clustering.cluster_weights(outer, number_of_clusters=5)
    nested = clustered.layers[1]
    assert isinstance(nested, keras.Sequential) and isinstance(nested.layers[0], clustering.ClusterWeights)
    stripped = clustering.strip_clustering(clustered)
    assert type(stripped.layers[1].layers[0]) is keras.layers.Dense
    assert _unique(stripped.layers[1].layers[0].kernel) <= 5 and _unique(stripped.layers[2].kernel) <= 5
    x = np.random.default_rng(0).random((4, 8)).astype("float32")
    np.testing.assert_allclose(stripped.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-6)
