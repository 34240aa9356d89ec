"""tfmot's clustering example runs on kopt with only the imports changed.

The code cells of tensorflow/model-optimization's
`tensorflow_model_optimization/g3doc/guide/clustering/clustering_example.ipynb`, one test per cell, with
`import tensorflow_model_optimization as tfmot` / the compat `keras` import replaced:

    tfmot.clustering.keras    -> kopt.clustering
    tf.keras / tf_keras       -> keras (Keras 3)

The guide is one notebook whose cells build on each other: each cell that later cells use is a module-scoped
fixture holding its code verbatim (so that any test can run alone or on another pytest-xdist worker), and its test
asserts on what it computed. Lines that differ from the guide are marked:
- `# kopt:` changes of this test, not of the API: MNIST (a download) is scikit-learn's digits shaped like MNIST
  (`tfmot_guide_data.load_mnist_like`: 28x28 uint8 0-255, 1347 train / 450 test images), files go to a temporary
  directory instead of `/tmp`, and `.tflite` files run in LiteRT's `ai_edge_litert.interpreter.Interpreter`
  (`tf.lite.Interpreter` is deprecated).
"""

import os
import tempfile
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from tfmot_guide_data import constant_tensors, load_mnist_like, values_per_channel

import kopt
from kopt.clustering import ClusterWeights


@pytest.fixture(scope="module", autouse=True)
def _in_temp_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clustering_example")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(directory))  # the guide's mkstemp files land here
        patch.chdir(directory)
        yield


def _kernels(model):
    return [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")]


# -- cell 4: load the data, train the baseline -------------------------------------------------------------------

@pytest.fixture(scope="module")
def baseline():
    keras.utils.set_random_seed(0)  # kopt: seeded
    # Load MNIST dataset
    (train_images, train_labels), (test_images, test_labels) = load_mnist_like()  # kopt: digits shaped like MNIST

    # Normalize the input image so that each pixel value is between 0 to 1.
    train_images = train_images / 255.0
    test_images  = test_images / 255.0

    # Define the model architecture.
    model = keras.Sequential([
        keras.layers.InputLayer(input_shape=(28, 28)),
        keras.layers.Reshape(target_shape=(28, 28, 1)),
        keras.layers.Conv2D(filters=12, kernel_size=(3, 3), activation=tf.nn.relu),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(10)
    ])

    # Train the digit classification model
    model.compile(optimizer='adam',
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=['accuracy'])

    model.fit(
        train_images,
        train_labels,
        validation_split=0.1,
        epochs=10
    )
    return types.SimpleNamespace(**locals())


def test_train_baseline(baseline):
    assert baseline.train_images.shape == (1347, 28, 28) and baseline.test_images.shape == (450, 28, 28)
    assert 0 <= baseline.train_images.min() and baseline.train_images.max() == 1.0
    assert int(baseline.model.optimizer.iterations) == 10 * 38  # 10 epochs of ceil(0.9 * 1347 / 32) batches
    assert baseline.model.output_shape == (None, 10)


# -- cell 5: evaluate and save the baseline ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_baseline(baseline):
    model, test_images, test_labels = baseline.model, baseline.test_images, baseline.test_labels
    _, baseline_model_accuracy = model.evaluate(
        test_images, test_labels, verbose=0)

    print('Baseline test accuracy:', baseline_model_accuracy)

    _, keras_file = tempfile.mkstemp('.h5')
    print('Saving model to: ', keras_file)
    keras.models.save_model(model, keras_file, include_optimizer=False)
    return types.SimpleNamespace(**locals())


def test_evaluate_and_save_baseline(saved_baseline):
    assert saved_baseline.baseline_model_accuracy > 0.9  # digits: 450 test images
    loaded = keras.models.load_model(saved_baseline.keras_file)
    np.testing.assert_allclose(loaded.predict(saved_baseline.test_images, verbose=0),
                               saved_baseline.model.predict(saved_baseline.test_images, verbose=0), atol=1e-5)


# -- cell 6: cluster the whole model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clustering(baseline):
    model = baseline.model
    import kopt

    cluster_weights = kopt.clustering.cluster_weights
    CentroidInitialization = kopt.clustering.CentroidInitialization

    clustering_params = {
      'number_of_clusters': 16,
      'cluster_centroids_init': CentroidInitialization.LINEAR
    }

    # Cluster a whole model
    clustered_model = cluster_weights(model, **clustering_params)

    # Use smaller learning rate for fine-tuning clustered model
    opt = keras.optimizers.Adam(learning_rate=1e-5)

    clustered_model.compile(
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      optimizer=opt,
      metrics=['accuracy'])

    clustered_model.summary()
    return types.SimpleNamespace(**locals())


def test_cluster_whole_model(clustering, baseline):
    clustered_model = clustering.clustered_model
    wrapped = [type(layer.layer) for layer in clustered_model.layers if isinstance(layer, ClusterWeights)]
    assert wrapped == [keras.layers.Conv2D, keras.layers.Dense]  # the layers with kernels, nothing else
    for kernel in _kernels(kopt.clustering.strip_clustering(clustered_model)):
        assert len(np.unique(kernel)) <= 16
    assert all(len(np.unique(k)) > 16 for k in _kernels(baseline.model))  # the baseline is not changed


# -- cell 7: fine-tune ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fine_tuned(clustering, baseline):
    clustered_model = clustering.clustered_model
    train_images, train_labels = baseline.train_images, baseline.train_labels
    # Fine-tune model
    clustered_model.fit(
      train_images,
      train_labels,
      batch_size=500,
      epochs=1,
      validation_split=0.1)
    return clustering


def test_fine_tune(fine_tuned):
    assert int(fine_tuned.clustered_model.optimizer.iterations) == 3  # ceil(1212 / 500)


# -- cell 8: evaluate the clustered model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clustered_accuracy(fine_tuned, baseline, saved_baseline):
    clustered_model, test_images, test_labels = fine_tuned.clustered_model, baseline.test_images, baseline.test_labels
    baseline_model_accuracy = saved_baseline.baseline_model_accuracy
    _, clustered_model_accuracy = clustered_model.evaluate(
      test_images, test_labels, verbose=0)

    print('Baseline test accuracy:', baseline_model_accuracy)
    print('Clustered test accuracy:', clustered_model_accuracy)
    return clustered_model_accuracy


def test_evaluate_clustered(clustered_accuracy, saved_baseline):
    assert clustered_accuracy >= saved_baseline.baseline_model_accuracy - 0.03  # 16 clusters cost little


# -- cell 9: strip and save ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stripped(fine_tuned):
    clustered_model = fine_tuned.clustered_model
    final_model = kopt.clustering.strip_clustering(clustered_model)

    _, clustered_keras_file = tempfile.mkstemp('.h5')
    print('Saving clustered model to: ', clustered_keras_file)
    keras.models.save_model(final_model, clustered_keras_file, 
                               include_optimizer=False)
    return types.SimpleNamespace(**locals())


def test_strip_and_save(stripped, baseline):
    final_model = stripped.final_model
    assert not any(isinstance(layer, ClusterWeights) for layer in final_model.layers)
    for kernel in _kernels(final_model):
        assert len(np.unique(kernel)) <= 16
    np.testing.assert_allclose(final_model.predict(baseline.test_images, verbose=0),
                               stripped.clustered_model.predict(baseline.test_images, verbose=0), atol=1e-4)
    loaded = keras.models.load_model(stripped.clustered_keras_file)
    for a, b in zip(_kernels(loaded), _kernels(final_model), strict=True):
        np.testing.assert_array_equal(a, b)


# -- cell 10: float TFLite file ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def float_tflite(stripped):
    final_model = stripped.final_model
    clustered_tflite_file = os.path.abspath('clustered_mnist.tflite')  # kopt: the test's directory, not /tmp
    converter = tf.lite.TFLiteConverter.from_keras_model(final_model)
    tflite_clustered_model = converter.convert()
    with open(clustered_tflite_file, 'wb') as f:
      f.write(tflite_clustered_model)
    print('Saved clustered TFLite model to:', clustered_tflite_file)
    return types.SimpleNamespace(**locals())


def test_float_tflite(float_tflite):
    kernels = [array for array, _ in constant_tensors(float_tflite.clustered_tflite_file, np.float32).values()]
    assert sorted(k.size for k in kernels) == [108, 20280]  # the Conv2D and Dense kernels, float
    for kernel in kernels:
        assert len(np.unique(kernel)) <= 16  # the clusters are in the file


# -- cell 11: gzipped size -----------------------------------------------------------------------------------------

def get_gzipped_model_size(file):
  # It returns the size of the gzipped model in bytes.
  import os
  import zipfile

  _, zipped_file = tempfile.mkstemp('.zip')
  with zipfile.ZipFile(zipped_file, 'w', compression=zipfile.ZIP_DEFLATED) as f:
    f.write(file)

  return os.path.getsize(zipped_file)


def test_gzipped_model_size(saved_baseline):
    size = get_gzipped_model_size(saved_baseline.keras_file)
    assert 0 < size < os.path.getsize(saved_baseline.keras_file)


# -- cell 12: compare sizes ----------------------------------------------------------------------------------------

def test_compare_sizes(saved_baseline, stripped, float_tflite):
    keras_file = saved_baseline.keras_file
    clustered_keras_file = stripped.clustered_keras_file
    clustered_tflite_file = float_tflite.clustered_tflite_file
    print("Size of gzipped baseline Keras model: %.2f bytes" % (get_gzipped_model_size(keras_file)))
    print("Size of gzipped clustered Keras model: %.2f bytes" % (get_gzipped_model_size(clustered_keras_file)))
    print("Size of gzipped clustered TFlite model: %.2f bytes" % (get_gzipped_model_size(clustered_tflite_file)))

    assert get_gzipped_model_size(clustered_keras_file) < 0.4 * get_gzipped_model_size(keras_file)
    assert get_gzipped_model_size(clustered_tflite_file) < 0.4 * get_gzipped_model_size(keras_file)


# -- cell 13: quantized and clustered TFLite file ------------------------------------------------------------------

@pytest.fixture(scope="module")
def quantized_tflite(stripped, saved_baseline):
    final_model, keras_file = stripped.final_model, saved_baseline.keras_file
    converter = tf.lite.TFLiteConverter.from_keras_model(final_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    tflite_quant_model = converter.convert()

    _, quantized_and_clustered_tflite_file = tempfile.mkstemp('.tflite')

    with open(quantized_and_clustered_tflite_file, 'wb') as f:
      f.write(tflite_quant_model)

    print('Saved quantized and clustered TFLite model to:', quantized_and_clustered_tflite_file)
    print("Size of gzipped baseline Keras model: %.2f bytes" % (get_gzipped_model_size(keras_file)))
    print("Size of gzipped clustered and quantized TFlite model: %.2f bytes" % (get_gzipped_model_size(quantized_and_clustered_tflite_file)))
    return types.SimpleNamespace(**locals())


def test_quantized_and_clustered_tflite(quantized_tflite, saved_baseline):
    # Dynamic-range quantization stores the Dense kernel in int8; the Conv2D kernel (108 < 1024 values) stays float.
    [(dense, axis)] = constant_tensors(quantized_tflite.quantized_and_clustered_tflite_file).values()
    assert dense.size == 20280
    assert max(values_per_channel(dense, axis)) <= 16  # 16 clusters, at most 16 int8 values
    [conv] = [array for array, _ in constant_tensors(quantized_tflite.tflite_quant_model, np.float32).values()]
    assert conv.size == 108 and len(np.unique(conv)) <= 16
    assert get_gzipped_model_size(quantized_tflite.quantized_and_clustered_tflite_file) < \
        0.2 * get_gzipped_model_size(saved_baseline.keras_file)


# -- cell 14: evaluate a TFLite model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_model(baseline):
    test_images, test_labels = baseline.test_images, baseline.test_labels

    def eval_model(interpreter):
      input_index = interpreter.get_input_details()[0]["index"]
      output_index = interpreter.get_output_details()[0]["index"]

      # Run predictions on every image in the "test" dataset.
      prediction_digits = []
      for i, test_image in enumerate(test_images):
        if i % 1000 == 0:
          print('Evaluated on {n} results so far.'.format(n=i))
        # Pre-processing: add batch dimension and convert to float32 to match with
        # the model's input data format.
        test_image = np.expand_dims(test_image, axis=0).astype(np.float32)
        interpreter.set_tensor(input_index, test_image)

        # Run inference.
        interpreter.invoke()

        # Post-processing: remove batch dimension and find the digit with highest
        # probability.
        output = interpreter.tensor(output_index)
        digit = np.argmax(output()[0])
        prediction_digits.append(digit)

      print('\n')
      # Compare prediction results with ground truth labels to calculate accuracy.
      prediction_digits = np.array(prediction_digits)
      accuracy = (prediction_digits == test_labels).mean()
      return accuracy

    return eval_model


def test_eval_model(eval_model, float_tflite, baseline):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=float_tflite.tflite_clustered_model)
    interpreter.allocate_tensors()
    predicted = np.argmax(float_tflite.final_model.predict(baseline.test_images, verbose=0), axis=1)
    assert eval_model(interpreter) == pytest.approx(np.mean(predicted == baseline.test_labels), abs=1 / 450)


# -- cell 15: evaluate the quantized and clustered TFLite model ----------------------------------------------------

def test_evaluate_quantized_and_clustered_tflite(quantized_tflite, eval_model, clustered_accuracy):
    tflite_quant_model, clustered_model_accuracy = quantized_tflite.tflite_quant_model, clustered_accuracy
    from ai_edge_litert.interpreter import Interpreter  # kopt: LiteRT (tf.lite.Interpreter is deprecated)
    interpreter = Interpreter(model_content=tflite_quant_model)
    interpreter.allocate_tensors()

    test_accuracy = eval_model(interpreter)

    print('Clustered and quantized TFLite test_accuracy:', test_accuracy)
    print('Clustered TF test accuracy:', clustered_model_accuracy)

    assert test_accuracy >= clustered_model_accuracy - 0.02
