"""tfmot's clustering comprehensive guide runs on kopt with only the imports changed.

The code cells of tensorflow/model-optimization's
`tensorflow_model_optimization/g3doc/guide/clustering/clustering_comprehensive_guide.ipynb`, one test per cell,
with `import tensorflow_model_optimization as tfmot` / `import tf_keras as keras` replaced:

    tfmot.clustering.keras    -> kopt.clustering
    tf_keras / tf.keras       -> keras (Keras 3)

The setup cell's helpers are module functions and its data and pretrained weights fixtures (as in
`test_tfmot_guides.py`). One line differs because Keras 3 itself changed, not kopt (marked `# Keras 3:`):
`save_weights` needs a `.weights.h5` name (the guide uses `mkstemp('.h5')`). After each cell come asserts on what
it computed.
"""

import tempfile

import keras
import numpy as np
import pytest

import kopt
from kopt.clustering import ClusterWeights

input_dim = 20
output_dim = 20


@pytest.fixture(autouse=True)
def _temp_files_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the guide's mkstemp files land here


# -- cell 2: setup -------------------------------------------------------------------------------------------------

@pytest.fixture()
def data():
    x_train = np.random.randn(1, input_dim).astype(np.float32)
    y_train = keras.utils.to_categorical(np.random.randn(1), num_classes=output_dim)
    return x_train, y_train


def setup_model():
  model = keras.Sequential([
      keras.layers.Dense(input_dim, input_shape=[input_dim]),
      keras.layers.Flatten()
  ])
  return model


def save_model_file(model):
  _, keras_file = tempfile.mkstemp('.h5') 
  model.save(keras_file, include_optimizer=False)
  return keras_file


def get_gzipped_model_size(model):
  # It returns the size of the gzipped model in bytes.
  import os
  import zipfile

  keras_file = save_model_file(model)

  _, zipped_file = tempfile.mkstemp('.zip')
  with zipfile.ZipFile(zipped_file, 'w', compression=zipfile.ZIP_DEFLATED) as f:
    f.write(keras_file)
  return os.path.getsize(zipped_file)


@pytest.fixture()
def pretrained_weights(data):
    x_train, y_train = data

    def train_model(model):
      model.compile(
          loss=keras.losses.categorical_crossentropy,
          optimizer='adam',
          metrics=['accuracy']
      )
      model.summary()
      model.fit(x_train, y_train)
      return model

    def save_model_weights(model):
      _, pretrained_weights = tempfile.mkstemp('.weights.h5')  # Keras 3: the guide uses '.h5'
      model.save_weights(pretrained_weights)
      return pretrained_weights

    def setup_pretrained_weights():
      model= setup_model()
      model = train_model(model)
      pretrained_weights = save_model_weights(model)
      return pretrained_weights

    setup_model()
    pretrained_weights = setup_pretrained_weights()
    return pretrained_weights


def test_setup(pretrained_weights, data):
    x_train, _ = data
    model = setup_model()
    model.load_weights(pretrained_weights)
    assert model.predict(x_train, verbose=0).shape == (1, output_dim)
    assert get_gzipped_model_size(model) > 0


def _kernel_and_bias(layer):
    return [keras.ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias)]


def _pretrained(pretrained_weights):
    model = setup_model()
    model.load_weights(pretrained_weights)
    return model


# -- cell 3: cluster a whole model ---------------------------------------------------------------------------------

@pytest.fixture()
def clustering_params():
    """Cell 3's parameters, which the later cells use."""
    CentroidInitialization = kopt.clustering.CentroidInitialization

    clustering_params = {
      'number_of_clusters': 3,
      'cluster_centroids_init': CentroidInitialization.KMEANS_PLUS_PLUS
    }
    return clustering_params


def test_cluster_whole_model(pretrained_weights):
    import kopt

    cluster_weights = kopt.clustering.cluster_weights
    CentroidInitialization = kopt.clustering.CentroidInitialization

    clustering_params = {
      'number_of_clusters': 3,
      'cluster_centroids_init': CentroidInitialization.KMEANS_PLUS_PLUS
    }

    model = setup_model()
    model.load_weights(pretrained_weights)

    clustered_model = cluster_weights(model, **clustering_params)

    clustered_model.summary()

    assert [type(layer) for layer in clustered_model.layers] == [ClusterWeights, keras.layers.Flatten]
    kernel, bias = _kernel_and_bias(kopt.clustering.strip_clustering(clustered_model).layers[0])
    pretrained_kernel, pretrained_bias = _kernel_and_bias(_pretrained(pretrained_weights).layers[0])
    assert len(np.unique(kernel)) == 3  # 3 clusters (k-means++ on 400 distinct values)
    # Each weight went to its nearest centroid; the bias is not clustered.
    centroids = np.unique(kernel)
    nearest = centroids[np.argmin(np.abs(pretrained_kernel[..., None] - centroids), axis=-1)]
    np.testing.assert_array_equal(kernel, nearest)
    np.testing.assert_array_equal(bias, pretrained_bias)


# -- cell 4: cluster some layers -----------------------------------------------------------------------------------

def test_cluster_some_layers_with_clone_model(pretrained_weights, clustering_params, data):
    cluster_weights = kopt.clustering.cluster_weights  # (from cell 3)
    # Create a base model
    base_model = setup_model()
    base_model.load_weights(pretrained_weights)

    # Helper function uses `cluster_weights` to make only 
    # the Dense layers train with clustering
    def apply_clustering_to_dense(layer):
      if isinstance(layer, keras.layers.Dense):
        return cluster_weights(layer, **clustering_params)
      return layer

    # Use `keras.models.clone_model` to apply `apply_clustering_to_dense` 
    # to the layers of the model.
    clustered_model = keras.models.clone_model(
        base_model,
        clone_function=apply_clustering_to_dense,
    )

    clustered_model.summary()

    assert [type(layer) for layer in clustered_model.layers] == [ClusterWeights, keras.layers.Flatten]
    x_train, y_train = data
    clustered_model.compile("adam", "categorical_crossentropy")
    clustered_model.fit(x_train, y_train, epochs=2, verbose=0)
    kernel, _ = _kernel_and_bias(kopt.clustering.strip_clustering(clustered_model).layers[0])
    assert len(np.unique(kernel)) <= 3  # still 3 values after training


# -- cell 5: cluster a custom layer --------------------------------------------------------------------------------

def test_cluster_custom_layer_kernel_and_bias(clustering_params, data):
    class MyDenseLayer(keras.layers.Dense, kopt.clustering.ClusterableLayer):

      def get_clusterable_weights(self):
       # Cluster kernel and bias. This is just an example, clustering
       # bias usually hurts model accuracy.
       return [('kernel', self.kernel), ('bias', self.bias)]

    # Use `cluster_weights` to make the `MyDenseLayer` layer train with clustering as usual.
    model_for_clustering = keras.Sequential([
      kopt.clustering.cluster_weights(MyDenseLayer(20, input_shape=[input_dim]), **clustering_params),
      keras.layers.Flatten()
    ])

    model_for_clustering.summary()

    wrapper = model_for_clustering.layers[0]
    assert isinstance(wrapper, ClusterWeights) and type(wrapper.layer) is MyDenseLayer
    assert wrapper.weight_labels == ['kernel', 'bias']  # the layer's own choice
    x_train, y_train = data
    model_for_clustering.compile("adam", "categorical_crossentropy")
    model_for_clustering.fit(x_train, y_train, epochs=2, verbose=0)  # the bias leaves its all-zero start
    kernel, bias = _kernel_and_bias(kopt.clustering.strip_clustering(model_for_clustering).layers[0])
    assert len(np.unique(kernel)) <= 3 and len(np.unique(bias)) <= 3  # both clustered


# -- cell 6: checkpoint and deserialize ----------------------------------------------------------------------------

def test_checkpoint_and_deserialize(pretrained_weights, clustering_params, data):
    cluster_weights = kopt.clustering.cluster_weights  # (from cell 3)
    # Define the model.
    base_model = setup_model()
    base_model.load_weights(pretrained_weights)
    clustered_model = cluster_weights(base_model, **clustering_params)

    # Save or checkpoint the model.
    _, keras_model_file = tempfile.mkstemp('.h5')
    clustered_model.save(keras_model_file, include_optimizer=True)

    # `cluster_scope` is needed for deserializing HDF5 models.
    with kopt.clustering.cluster_scope():
      loaded_model = keras.models.load_model(keras_model_file)

    loaded_model.summary()

    x_train, _ = data
    assert [type(layer) for layer in loaded_model.layers] == [ClusterWeights, keras.layers.Flatten]
    for a, b in zip(loaded_model.weights, clustered_model.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    np.testing.assert_array_equal(loaded_model.predict(x_train, verbose=0),
                                  clustered_model.predict(x_train, verbose=0))


# -- cell 7: improve the compression: strip, then compare sizes ----------------------------------------------------

def test_strip_clustering_and_compare_sizes(clustering_params, data):
    x_train, y_train = data
    cluster_weights = kopt.clustering.cluster_weights  # (from cell 3)
    model = setup_model()
    clustered_model = cluster_weights(model, **clustering_params)

    clustered_model.compile(
        loss=keras.losses.categorical_crossentropy,
        optimizer='adam',
        metrics=['accuracy']
    )

    clustered_model.fit(
        x_train,
        y_train
    )

    final_model = kopt.clustering.strip_clustering(clustered_model)

    print("final model")
    final_model.summary()

    print("\n")
    print("Size of gzipped clustered model without stripping: %.2f bytes" 
          % (get_gzipped_model_size(clustered_model)))
    print("Size of gzipped clustered model with stripping: %.2f bytes" 
          % (get_gzipped_model_size(final_model)))

    assert [type(layer) for layer in final_model.layers] == [keras.layers.Dense, keras.layers.Flatten]
    kernel, _ = _kernel_and_bias(final_model.layers[0])
    assert len(np.unique(kernel)) <= 3
    np.testing.assert_allclose(final_model.predict(x_train, verbose=0), clustered_model.predict(x_train, verbose=0),
                               atol=1e-6)
    assert get_gzipped_model_size(final_model) < get_gzipped_model_size(clustered_model)
