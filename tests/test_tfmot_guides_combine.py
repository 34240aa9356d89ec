"""tfmot's collaborative optimization guides run on kopt with only the imports changed.

The code cells of tensorflow/model-optimization's `tensorflow_model_optimization/g3doc/guide/combine/`
`sparse_clustering_example.ipynb`, `pqat_example.ipynb`, `cqat_example.ipynb` and `pcqat_example.ipynb`, one test
per cell, with `import tensorflow_model_optimization as tfmot` / `import tf_keras as keras` replaced:

    tfmot.sparsity.keras                 -> kopt.sparsity
    tfmot.quantization.keras             -> kopt.quantization
    tfmot.clustering.keras               -> kopt.clustering
    ...clustering.keras.experimental     -> kopt.clustering.experimental (`cluster`)
    tfmot.experimental.combine           -> kopt.experimental.combine
    tf_keras / tf.keras                  -> keras (Keras 3)

The guides are notebooks whose cells build on each other: each cell that later cells use is a fixture holding its
code verbatim (so that any test can run alone or on another pytest-xdist worker), and its test asserts on what it
computed; the printing cells are tests that parse what the guide prints. Cells that are the same in several guides
run once: the baseline (cells 3-5, the same in the four guides but for the PCQAT guide's explicit
`Adam(learning_rate=1e-3)`, Adam's default) and the pruning (cells 6-9 of the sparsity-preserving clustering, PQAT
and PCQAT guides: the same code but for the helper each defines to print the sparsity); so do the helpers the four
define alike (`get_gzipped_model_size`, `eval_model`, `mnist_representative_data_gen`). Each guide is a class with
its own working directory (the guides write `qat_model.tflite` and the like to the current directory).

Lines that differ from the guides are marked `# kopt:`, changes of this test, not of the API: MNIST (a download) is
scikit-learn's digits shaped like MNIST (`tfmot_guide_data.load_mnist_like`: 28x28 uint8 0-255, 1347 train / 450
test images), and `.tflite` files run in LiteRT's `ai_edge_litert.interpreter.Interpreter` (`tf.lite.Interpreter`
is deprecated).
"""

import os
import re
import tempfile
import types
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tfmot_guide_data import constant_tensors, load_mnist_like, values_per_channel

import kopt
from kopt.clustering import ClusterWeights
from kopt.quantization import QuantizeWrapper


@pytest.fixture(scope="module", autouse=True)
def _temp_files(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("combine")))  # mkstemp files land here
        yield


@pytest.fixture(scope="class", autouse=True)
def _guide_directory(request, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp(request.cls.__name__ if request.cls else "common"))
        yield


def _kernels(model):
    return {layer.name: keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")}


def _printed_sparsity(text):
    """[(weight name, zeros, size)] from the guides' `print_model_weights_sparsity` lines."""
    return [(name, int(zeros), int(size))
            for name, zeros, size in re.findall(r"^(\S+): [\d.]+% sparsity\s+\((\d+)/(\d+)\)", text, re.M)]


def _printed_clusters(text):
    """[(layer/weight name, count)] from the guides' `print_model_weight_clusters` lines."""
    return [(name, int(count)) for name, count in re.findall(r"^(\S+): (\d+) clusters", text, re.M)]


def _kernel_sparsity(text):
    """The printed (zeros, size) of the weights named `kernel` (the Conv2D's 108, the Dense's 20280), by size."""
    return sorted(((z, s) for name, z, s in _printed_sparsity(text) if name == "kernel"),
                  key=lambda zs: zs[1])


def _kernel_clusters(text):
    """The printed cluster counts of the `.../kernel` weights, in model order."""
    return [count for name, count in _printed_clusters(text) if name.endswith("/kernel")]


def _zeros(array):
    return np.count_nonzero(array == 0) / array.size


# == Cells 3-9 as the guides share them ===========================================================================

@pytest.fixture(scope="module")
def baseline():
    """Cells 4-5: load the data, train and save the baseline."""
    keras.utils.set_random_seed(0)  # kopt: seeded
    # Load MNIST dataset
    (train_images, train_labels), (test_images, test_labels) = load_mnist_like()  # kopt: digits shaped like MNIST

    # Normalize the input image so that each pixel value is between 0 to 1.
    train_images = train_images / 255.0
    test_images  = test_images / 255.0

    model = keras.Sequential([
      keras.layers.InputLayer(input_shape=(28, 28)),
      keras.layers.Reshape(target_shape=(28, 28, 1)),
      keras.layers.Conv2D(filters=12, kernel_size=(3, 3),
                             activation=tf.nn.relu),
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

    # -- cell 5 --
    _, baseline_model_accuracy = model.evaluate(
        test_images, test_labels, verbose=0)

    print('Baseline test accuracy:', baseline_model_accuracy)

    _, keras_file = tempfile.mkstemp('.h5')
    print('Saving model to: ', keras_file)
    keras.models.save_model(model, keras_file, include_optimizer=False)
    return types.SimpleNamespace(**locals())


def test_train_and_save_baseline(baseline):
    assert baseline.train_images.shape == (1347, 28, 28) and baseline.train_images.max() == 1.0
    assert int(baseline.model.optimizer.iterations) == 10 * 38  # 10 epochs of ceil(0.9 * 1347 / 32) batches
    assert baseline.baseline_model_accuracy > 0.9  # digits: 450 test images
    loaded = keras.models.load_model(baseline.keras_file)
    np.testing.assert_allclose(loaded.predict(baseline.test_images, verbose=0),
                               baseline.model.predict(baseline.test_images, verbose=0), atol=1e-5)


@pytest.fixture(scope="module")
def pruning(baseline):
    """Cells 6-7: prune to 50% sparsity and fine-tune."""
    model, train_images, train_labels = baseline.model, baseline.train_images, baseline.train_labels
    import kopt

    prune_low_magnitude = kopt.sparsity.prune_low_magnitude

    pruning_params = {
          'pruning_schedule': kopt.sparsity.ConstantSparsity(0.5, begin_step=0, frequency=100)
      }

    callbacks = [
      kopt.sparsity.UpdatePruningStep()
    ]

    pruned_model = prune_low_magnitude(model, **pruning_params)

    # Use smaller learning rate for fine-tuning
    opt = keras.optimizers.Adam(learning_rate=1e-5)

    pruned_model.compile(
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      optimizer=opt,
      metrics=['accuracy'])

    pruned_model.summary()

    # -- cell 7 --
    # Fine-tune model
    pruned_model.fit(
      train_images,
      train_labels,
      epochs=3,
      validation_split=0.1,
      callbacks=callbacks)
    return types.SimpleNamespace(**locals())


def test_prune_and_fine_tune(pruning):
    pruned_model = pruning.pruned_model
    assert [type(layer.layer) for layer in pruned_model.layers if isinstance(layer, kopt.sparsity.PruneLowMagnitude)] \
        == [keras.layers.Conv2D, keras.layers.Dense]
    assert int(pruned_model.optimizer.iterations) == 3 * 38  # past step 100: ConstantSparsity pruned once
    for kernel in _kernels(kopt.sparsity.strip_pruning(pruned_model)).values():
        assert _zeros(kernel) == pytest.approx(0.5, abs=1 / kernel.size)


@pytest.fixture(scope="module")
def stripped_pruned(pruning):
    """Cell 9 (the sparsity-preserving clustering guide's, which the PQAT and PCQAT guides share but for its copy)."""
    pruned_model = pruning.pruned_model
    stripped_pruned_model = kopt.sparsity.strip_pruning(pruned_model)

    print_model_weights_sparsity(stripped_pruned_model)

    stripped_pruned_model_copy = keras.models.clone_model(stripped_pruned_model)
    stripped_pruned_model_copy.set_weights(stripped_pruned_model.get_weights())
    return types.SimpleNamespace(**locals())


def test_strip_pruning(stripped_pruned, capsys):
    stripped_pruned_model = stripped_pruned.stripped_pruned_model
    print_model_weights_sparsity(stripped_pruned_model)
    assert _kernel_sparsity(capsys.readouterr().out) == [(54, 108), (10140, 20280)]  # 50% of each kernel
    assert not any(isinstance(layer, keras.layers.Wrapper) for layer in stripped_pruned_model.layers)
    for a, b in zip(stripped_pruned.stripped_pruned_model_copy.weights, stripped_pruned_model.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


# The helper cells the four guides define alike.

def print_model_weights_sparsity(model):  # the sparsity-preserving clustering and PCQAT guides' (cell 8)

    for layer in model.layers:
        if isinstance(layer, keras.layers.Wrapper):
            weights = layer.trainable_weights
        else:
            weights = layer.weights
        for weight in weights:
            if "kernel" not in weight.name or "centroid" in weight.name:
                continue
            weight_size = weight.numpy().size
            zero_num = np.count_nonzero(weight == 0)
            print(
                f"{weight.name}: {zero_num/weight_size:.2%} sparsity ",
                f"({zero_num}/{weight_size})",
            )


def print_model_weight_clusters(model):  # the CQAT and PCQAT guides' (cell 8)

    for layer in model.layers:
        if isinstance(layer, keras.layers.Wrapper):
            weights = layer.trainable_weights
        else:
            weights = layer.weights
        for weight in weights:
            # ignore auxiliary quantization weights
            if "quantize_layer" in weight.name:
                continue
            if "kernel" in weight.name:
                unique_count = len(np.unique(weight))
                print(
                    f"{layer.name}/{weight.name}: {unique_count} clusters "
                )


def get_gzipped_model_size(file):
  # It returns the size of the gzipped model in kilobytes.

  _, zipped_file = tempfile.mkstemp('.zip')
  with zipfile.ZipFile(zipped_file, 'w', compression=zipfile.ZIP_DEFLATED) as f:
    f.write(file)

  return os.path.getsize(zipped_file)/1000


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
          print(f"Evaluated on {i} results so far.")
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


@pytest.fixture(scope="module")
def mnist_representative_data_gen(baseline):
    train_images = baseline.train_images

    def mnist_representative_data_gen():
      for image in train_images[:1000]:  
        image = np.expand_dims(image, axis=0).astype(np.float32)
        yield [image]

    return mnist_representative_data_gen


def test_helpers(baseline, eval_model, mnist_representative_data_gen, capsys):
    print_model_weights_sparsity(baseline.model)
    assert _kernel_sparsity(capsys.readouterr().out) == [(0, 108), (0, 20280)]
    print_model_weight_clusters(baseline.model)
    assert [count > 100 for count in _kernel_clusters(capsys.readouterr().out)] == [True, True]
    assert 0 < get_gzipped_model_size(baseline.keras_file) < os.path.getsize(baseline.keras_file) / 1000
    interpreter = Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(baseline.model).convert())
    interpreter.allocate_tensors()
    assert eval_model(interpreter) == pytest.approx(baseline.baseline_model_accuracy, abs=1 / 450)
    samples = list(mnist_representative_data_gen())
    assert len(samples) == 1000 and samples[0][0].shape == (1, 28, 28) and samples[0][0].dtype == np.float32


def _post_training_quantization(stripped_model, eval_model, mnist_representative_data_gen,
                                quantized_test_accuracy, label):
    """Cells 17-18 of the PQAT and CQAT guides (the same code but for the model and the label it prints)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(stripped_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = mnist_representative_data_gen
    post_training_tflite_model = converter.convert()
    post_training_model_file = 'post_training_model.tflite'
    # Save the model.
    with open(post_training_model_file, 'wb') as f:
        f.write(post_training_tflite_model)

    # Compare accuracy
    interpreter = Interpreter(post_training_model_file)  # kopt: LiteRT (tf.lite.Interpreter is deprecated)
    interpreter.allocate_tensors()

    post_training_test_accuracy = eval_model(interpreter)

    print(f'{label} TFLite test_accuracy:', quantized_test_accuracy)
    print('Post-training (no fine-tuning) TF test accuracy:', post_training_test_accuracy)
    return post_training_tflite_model, post_training_test_accuracy


# == Sparsity-preserving clustering (sparse_clustering_example.ipynb) =============================================

class TestSparsityPreservingClustering:

    @pytest.fixture(scope="class")
    def clustering(self, stripped_pruned, baseline):
        """Cell 10: plain clustering, then sparsity-preserving clustering, of the pruned model."""
        stripped_pruned_model = stripped_pruned.stripped_pruned_model
        stripped_pruned_model_copy = stripped_pruned.stripped_pruned_model_copy
        train_images, train_labels = baseline.train_images, baseline.train_labels
        # Clustering
        cluster_weights = kopt.clustering.cluster_weights
        CentroidInitialization = kopt.clustering.CentroidInitialization

        clustering_params = {
          'number_of_clusters': 8,
          'cluster_centroids_init': CentroidInitialization.KMEANS_PLUS_PLUS
        }

        clustered_model = cluster_weights(stripped_pruned_model, **clustering_params)

        clustered_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])

        print('Train clustering model:')
        clustered_model.fit(train_images, train_labels,epochs=3, validation_split=0.1)


        stripped_pruned_model.save("stripped_pruned_model_clustered.h5")

        # Sparsity preserving clustering
        from kopt.clustering import (
            experimental as cluster,
        )

        cluster_weights = cluster.cluster_weights

        clustering_params = {
          'number_of_clusters': 8,
          'cluster_centroids_init': CentroidInitialization.KMEANS_PLUS_PLUS,
          'preserve_sparsity': True
        }

        sparsity_clustered_model = cluster_weights(stripped_pruned_model_copy, **clustering_params)

        sparsity_clustered_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])

        print('Train sparsity preserving clustering model:')
        sparsity_clustered_model.fit(train_images, train_labels,epochs=3, validation_split=0.1)
        return types.SimpleNamespace(**locals())

    def test_cluster_and_sparsity_preserving_cluster(self, clustering, baseline):
        for model in (clustering.clustered_model, clustering.sparsity_clustered_model):
            assert [type(layer.layer) for layer in model.layers if isinstance(layer, ClusterWeights)] == \
                [keras.layers.Conv2D, keras.layers.Dense]
            assert int(model.optimizer.iterations) == 3 * 38
            _, accuracy = model.evaluate(baseline.test_images, baseline.test_labels, verbose=0)
            assert accuracy > 0.85
            for kernel in _kernels(kopt.clustering.strip_clustering(model)).values():
                assert len(np.unique(kernel)) <= 8
        assert os.path.exists("stripped_pruned_model_clustered.h5")

    def test_print_sparsity(self, clustering, capsys):
        clustered_model, sparsity_clustered_model = clustering.clustered_model, clustering.sparsity_clustered_model
        print("Clustered Model sparsity:\n")
        print_model_weights_sparsity(clustered_model)
        print("\nSparsity preserved clustered Model sparsity:\n")
        print_model_weights_sparsity(sparsity_clustered_model)

        clustered, preserved = capsys.readouterr().out.split("Sparsity preserved clustered Model sparsity:")
        # The wrappers' `kernel` is the float weight being trained: plain clustering trains the zeros away,
        # sparsity-preserving clustering keeps them (the guide prints 0% against 50%).
        assert all(zeros < size / 4 for zeros, size in _kernel_sparsity(clustered))
        assert _kernel_sparsity(preserved) == [(54, 108), (10140, 20280)]
        for kernel in _kernels(kopt.clustering.strip_clustering(sparsity_clustered_model)).values():
            assert _zeros(kernel) >= 0.5  # the clustered values too

    def test_compare_keras_file_sizes(self, clustering):
        clustered_model, sparsity_clustered_model = clustering.clustered_model, clustering.sparsity_clustered_model
        # Clustered model
        clustered_model_file = 'clustered_model.h5'

        # Save the model.
        clustered_model.save(clustered_model_file)

        #Sparsity Preserve Clustered model
        sparsity_clustered_model_file = 'sparsity_clustered_model.h5'

        # Save the model.
        sparsity_clustered_model.save(sparsity_clustered_model_file)

        print("Clustered Model size: ", get_gzipped_model_size(clustered_model_file), ' KB')
        print("Sparsity preserved clustered Model size: ", get_gzipped_model_size(sparsity_clustered_model_file), ' KB')

        # The unstripped models hold their float kernels: both sizes are those of a dense model.
        assert get_gzipped_model_size(sparsity_clustered_model_file) < get_gzipped_model_size(clustered_model_file)
        with kopt.clustering.cluster_scope():
            loaded = keras.models.load_model(sparsity_clustered_model_file)
        assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in sparsity_clustered_model.layers]

    @pytest.fixture(scope="class")
    def quantized(self, clustering):
        """Cell 14: strip, convert with dynamic-range quantization."""
        sparsity_clustered_model = clustering.sparsity_clustered_model
        sparsity_clustered_model_file = 'sparsity_clustered_model.h5'
        sparsity_clustered_model.save(sparsity_clustered_model_file)  # kopt: cell 13's file, for this cell alone
        stripped_sparsity_clustered_model = kopt.clustering.strip_clustering(sparsity_clustered_model)

        converter = tf.lite.TFLiteConverter.from_keras_model(stripped_sparsity_clustered_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        sparsity_clustered_quant_model = converter.convert()

        _, pruned_and_clustered_tflite_file = tempfile.mkstemp('.tflite')

        with open(pruned_and_clustered_tflite_file, 'wb') as f:
          f.write(sparsity_clustered_quant_model)

        print("Sparsity preserved clustered Model size: ", get_gzipped_model_size(sparsity_clustered_model_file), ' KB')
        print("Sparsity preserved clustered and quantized TFLite model size:",
               get_gzipped_model_size(pruned_and_clustered_tflite_file), ' KB')
        return types.SimpleNamespace(**locals())

    def test_strip_and_quantize(self, quantized, baseline):
        # Dynamic-range quantization stores the Dense kernel in int8; the Conv2D kernel (108 < 1024 values) stays float.
        [(dense, axis)] = constant_tensors(quantized.pruned_and_clustered_tflite_file).values()
        assert dense.size == 20280
        assert max(values_per_channel(dense, axis)) <= 8 and _zeros(dense) >= 0.5
        [(conv, _)] = constant_tensors(quantized.pruned_and_clustered_tflite_file, np.float32).values()
        assert conv.size == 108 and len(np.unique(conv)) <= 8 and _zeros(conv) >= 0.5
        assert get_gzipped_model_size(quantized.pruned_and_clustered_tflite_file) < \
            0.2 * get_gzipped_model_size(baseline.keras_file)

    def test_evaluate(self, quantized, baseline, eval_model):
        stripped_sparsity_clustered_model = quantized.stripped_sparsity_clustered_model
        pruned_and_clustered_tflite_file = quantized.pruned_and_clustered_tflite_file
        # Keras model evaluation
        stripped_sparsity_clustered_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])
        _, sparsity_clustered_keras_accuracy = stripped_sparsity_clustered_model.evaluate(
            baseline.test_images, baseline.test_labels, verbose=0)

        # TFLite model evaluation
        interpreter = Interpreter(pruned_and_clustered_tflite_file)  # kopt: LiteRT (tf.lite.Interpreter is deprecated)
        interpreter.allocate_tensors()

        sparsity_clustered_tflite_accuracy = eval_model(interpreter)

        print('Pruned, clustered and quantized Keras model accuracy:', sparsity_clustered_keras_accuracy)
        print('Pruned, clustered and quantized TFLite model accuracy:', sparsity_clustered_tflite_accuracy)

        assert sparsity_clustered_keras_accuracy > 0.85
        assert sparsity_clustered_tflite_accuracy >= sparsity_clustered_keras_accuracy - 0.02


# == Pruning-preserving QAT (pqat_example.ipynb) ===================================================================

def print_pqat_model_weights_sparsity(model):  # the PQAT guide's cell 8 (named print_model_weights_sparsity there)

    for layer in model.layers:
        if isinstance(layer, keras.layers.Wrapper):
            weights = layer.trainable_weights
        else:
            weights = layer.weights
        for weight in weights:
            # ignore auxiliary quantization weights
            if "quantize_layer" in weight.name:
                continue
            weight_size = weight.numpy().size
            zero_num = np.count_nonzero(weight == 0)
            print(
                f"{weight.name}: {zero_num/weight_size:.2%} sparsity ",
                f"({zero_num}/{weight_size})",
            )


class TestPQAT:

    def test_evaluate_pruned(self, pruning, baseline):
        pruned_model, test_images, test_labels = pruning.pruned_model, baseline.test_images, baseline.test_labels
        baseline_model_accuracy = baseline.baseline_model_accuracy
        _, pruned_model_accuracy = pruned_model.evaluate(
          test_images, test_labels, verbose=0)

        print('Baseline test accuracy:', baseline_model_accuracy)
        print('Pruned test accuracy:', pruned_model_accuracy)

        assert pruned_model_accuracy >= baseline_model_accuracy - 0.05

    @pytest.fixture(scope="class")
    def trained(self, stripped_pruned, baseline):
        """Cell 11: QAT and PQAT of the pruned model."""
        stripped_pruned_model = stripped_pruned.stripped_pruned_model
        train_images, train_labels = baseline.train_images, baseline.train_labels
        # QAT
        qat_model = kopt.quantization.quantize_model(stripped_pruned_model)

        qat_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])
        print('Train qat model:')
        qat_model.fit(train_images, train_labels, batch_size=128, epochs=1, validation_split=0.1)

        # PQAT
        quant_aware_annotate_model = kopt.quantization.quantize_annotate_model(
                      stripped_pruned_model)
        pqat_model = kopt.quantization.quantize_apply(
                      quant_aware_annotate_model,
                      kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme())

        pqat_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])
        print('Train pqat model:')
        pqat_model.fit(train_images, train_labels, batch_size=128, epochs=1, validation_split=0.1)
        return types.SimpleNamespace(**locals())

    def test_qat_and_pqat(self, trained, baseline):
        for model in (trained.qat_model, trained.pqat_model):
            assert [type(layer.layer) for layer in model.layers if isinstance(layer, QuantizeWrapper)] == \
                [keras.layers.Conv2D, keras.layers.Dense]
            assert int(model.optimizer.iterations) == 10  # ceil(1212 / 128)
            _, accuracy = model.evaluate(baseline.test_images, baseline.test_labels, verbose=0)
            assert accuracy > 0.85

    def test_print_sparsity(self, trained, capsys):
        qat_model, pqat_model = trained.qat_model, trained.pqat_model
        print("QAT Model sparsity:")
        print_pqat_model_weights_sparsity(qat_model)  # kopt: the guide's name is print_model_weights_sparsity
        print("PQAT Model sparsity:")
        print_pqat_model_weights_sparsity(pqat_model)  # kopt: the guide's name is print_model_weights_sparsity

        qat, pqat = capsys.readouterr().out.split("PQAT Model sparsity:")
        assert all(zeros < size / 4 for zeros, size in _kernel_sparsity(qat))  # QAT trains the zeros away
        assert _kernel_sparsity(pqat) == [(54, 108), (10140, 20280)]  # PQAT keeps them

    @pytest.fixture(scope="class")
    def converted(self, trained):
        """Cell 14: convert both models."""
        qat_model, pqat_model = trained.qat_model, trained.pqat_model
        # QAT model
        converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        qat_tflite_model = converter.convert()
        qat_model_file = 'qat_model.tflite'
        # Save the model.
        with open(qat_model_file, 'wb') as f:
            f.write(qat_tflite_model)

        # PQAT model
        converter = tf.lite.TFLiteConverter.from_keras_model(pqat_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        pqat_tflite_model = converter.convert()
        pqat_model_file = 'pqat_model.tflite'
        # Save the model.
        with open(pqat_model_file, 'wb') as f:
            f.write(pqat_tflite_model)

        print("QAT model size: ", get_gzipped_model_size(qat_model_file), ' KB')
        print("PQAT model size: ", get_gzipped_model_size(pqat_model_file), ' KB')
        return types.SimpleNamespace(**locals())

    def test_convert(self, converted):
        qat, pqat = (constant_tensors(file) for file in (converted.qat_model_file, converted.pqat_model_file))
        assert sorted(array.size for array, _ in pqat.values()) == [108, 20280]  # both kernels int8
        for array, _ in pqat.values():
            assert _zeros(array) >= 0.5  # PQAT's zeros are int8 zeros in the file
        for array, _ in qat.values():
            assert _zeros(array) < 0.5
        assert get_gzipped_model_size(converted.pqat_model_file) < get_gzipped_model_size(converted.qat_model_file)

    @pytest.fixture(scope="class")
    def pqat_test_accuracy(self, converted, eval_model):
        pqat_model_file = converted.pqat_model_file
        interpreter = Interpreter(pqat_model_file)  # kopt: LiteRT (tf.lite.Interpreter is deprecated)
        interpreter.allocate_tensors()

        pqat_test_accuracy = eval_model(interpreter)

        print('Pruned and quantized TFLite test_accuracy:', pqat_test_accuracy)
        return pqat_test_accuracy

    def test_evaluate_pqat_tflite(self, pqat_test_accuracy, trained, baseline):
        _, pqat_keras_accuracy = trained.pqat_model.evaluate(baseline.test_images, baseline.test_labels, verbose=0)
        assert pqat_test_accuracy >= pqat_keras_accuracy - 0.02

    def test_post_training_quantization(self, stripped_pruned, baseline, eval_model, mnist_representative_data_gen,
                                        pqat_test_accuracy):
        content, post_training_test_accuracy = _post_training_quantization(
            stripped_pruned.stripped_pruned_model, eval_model, mnist_representative_data_gen,
            pqat_test_accuracy, "PQAT")
        assert post_training_test_accuracy > 0.85
        assert sorted(array.size for array, _ in constant_tensors(content).values()) == [108, 20280]


# == Cluster-preserving QAT (cqat_example.ipynb) ===================================================================

class TestCQAT:

    @pytest.fixture(scope="class")
    def clustering(self, baseline):
        """Cells 6-7: cluster per channel and fine-tune."""
        model, train_images, train_labels = baseline.model, baseline.train_images, baseline.train_labels
        import kopt

        cluster_weights = kopt.clustering.cluster_weights
        CentroidInitialization = kopt.clustering.CentroidInitialization

        clustering_params = {
          'number_of_clusters': 8,
          'cluster_centroids_init': CentroidInitialization.KMEANS_PLUS_PLUS,
          'cluster_per_channel': True,
        }

        clustered_model = cluster_weights(model, **clustering_params)

        # Use smaller learning rate for fine-tuning
        opt = keras.optimizers.Adam(learning_rate=1e-5)

        clustered_model.compile(
          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
          optimizer=opt,
          metrics=['accuracy'])

        clustered_model.summary()

        # -- cell 7 --
        # Fine-tune model
        clustered_model.fit(
          train_images,
          train_labels,
          epochs=3,
          validation_split=0.1)
        return types.SimpleNamespace(**locals())

    def test_cluster_per_channel_and_fine_tune(self, clustering):
        clustered_model = clustering.clustered_model
        assert [type(layer.layer) for layer in clustered_model.layers if isinstance(layer, ClusterWeights)] == \
            [keras.layers.Conv2D, keras.layers.Dense]
        assert int(clustered_model.optimizer.iterations) == 3 * 38
        conv, dense = _kernels(kopt.clustering.strip_clustering(clustered_model)).values()
        assert max(values_per_channel(conv, -1)) <= 8  # 8 per output channel (tfmot: Conv2D only)
        assert len(np.unique(dense)) <= 8

    @pytest.fixture(scope="class")
    def stripped_clustered_model(self, clustering):
        """Cell 9."""
        clustered_model = clustering.clustered_model
        stripped_clustered_model = kopt.clustering.strip_clustering(clustered_model)

        print_model_weight_clusters(stripped_clustered_model)
        return stripped_clustered_model

    def test_strip_clustering(self, stripped_clustered_model, capsys):
        print_model_weight_clusters(stripped_clustered_model)
        conv, dense = _kernel_clusters(capsys.readouterr().out)
        assert 8 < conv <= 12 * 8 and dense <= 8

    @pytest.fixture(scope="class")
    def clustered_model_accuracy(self, clustering, baseline):
        """Cell 10."""
        clustered_model = clustering.clustered_model
        test_images, test_labels = baseline.test_images, baseline.test_labels
        baseline_model_accuracy = baseline.baseline_model_accuracy
        _, clustered_model_accuracy = clustered_model.evaluate(
          test_images, test_labels, verbose=0)

        print('Baseline test accuracy:', baseline_model_accuracy)
        print('Clustered test accuracy:', clustered_model_accuracy)
        return clustered_model_accuracy

    def test_evaluate_clustered(self, clustered_model_accuracy, baseline):
        assert clustered_model_accuracy >= baseline.baseline_model_accuracy - 0.05

    @pytest.fixture(scope="class")
    def trained(self, stripped_clustered_model, baseline):
        """Cell 11: QAT and CQAT of the clustered model."""
        train_images, train_labels = baseline.train_images, baseline.train_labels
        # QAT
        qat_model = kopt.quantization.quantize_model(stripped_clustered_model)

        qat_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])
        print('Train qat model:')
        qat_model.fit(train_images, train_labels, batch_size=128, epochs=1, validation_split=0.1)

        # CQAT
        quant_aware_annotate_model = kopt.quantization.quantize_annotate_model(
                      stripped_clustered_model)
        cqat_model = kopt.quantization.quantize_apply(
                      quant_aware_annotate_model,
                      kopt.experimental.combine.Default8BitClusterPreserveQuantizeScheme())

        cqat_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])
        print('Train cqat model:')
        cqat_model.fit(train_images, train_labels, batch_size=128, epochs=1, validation_split=0.1)
        return types.SimpleNamespace(**locals())

    def test_qat_and_cqat(self, trained, baseline):
        for model in (trained.qat_model, trained.cqat_model):
            assert int(model.optimizer.iterations) == 10  # ceil(1212 / 128)
            _, accuracy = model.evaluate(baseline.test_images, baseline.test_labels, verbose=0)
            assert accuracy > 0.85

    def test_print_clusters(self, trained, capsys):
        qat_model, cqat_model = trained.qat_model, trained.cqat_model
        print("QAT Model clusters:")
        print_model_weight_clusters(qat_model)
        print("CQAT Model clusters:")
        print_model_weight_clusters(cqat_model)

        qat, cqat = capsys.readouterr().out.split("CQAT Model clusters:")
        assert all(count > 96 for count in _kernel_clusters(qat))  # QAT trains the clusters away
        conv, dense = _kernel_clusters(cqat)  # CQAT keeps them (tfmot's guide prints the same)
        assert conv <= 96 and dense <= 8, cqat

    @pytest.fixture(scope="class")
    def converted(self, trained):
        """Cell 14: convert both models."""
        qat_model, cqat_model = trained.qat_model, trained.cqat_model
        # QAT model
        converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        qat_tflite_model = converter.convert()
        qat_model_file = 'qat_model.tflite'
        # Save the model.
        with open(qat_model_file, 'wb') as f:
            f.write(qat_tflite_model)

        # CQAT model
        converter = tf.lite.TFLiteConverter.from_keras_model(cqat_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        cqat_tflite_model = converter.convert()
        cqat_model_file = 'cqat_model.tflite'
        # Save the model.
        with open(cqat_model_file, 'wb') as f:
            f.write(cqat_tflite_model)

        print("QAT model size: ", get_gzipped_model_size(qat_model_file), ' KB')
        print("CQAT model size: ", get_gzipped_model_size(cqat_model_file), ' KB')
        return types.SimpleNamespace(**locals())

    def test_convert(self, converted):
        kernels = {array.size: (array, axis) for array, axis in constant_tensors(converted.cqat_model_file).values()}
        assert sorted(kernels) == [108, 20280]  # both kernels are int8 constants
        conv, axis = kernels[108]
        assert axis == 0 and max(values_per_channel(conv, axis)) <= 8  # per channel: 8 clusters, 8 int8 values
        dense, axis = kernels[20280]
        assert axis is None and values_per_channel(dense, axis) <= [8]  # per tensor: 8 clusters, 8 int8 values
        ops = kopt.convert.inspect(converted.cqat_tflite_model).op_counts
        assert ops.get("FULLY_CONNECTED") == ops.get("CONV_2D") == 1 and not {"ONE_HOT", "SUM"} & set(ops)
        assert get_gzipped_model_size(converted.cqat_model_file) < get_gzipped_model_size(converted.qat_model_file)

    @pytest.fixture(scope="class")
    def cqat_test_accuracy(self, converted, eval_model, clustered_model_accuracy):
        cqat_model_file = converted.cqat_model_file
        interpreter = Interpreter(cqat_model_file)  # kopt: LiteRT (tf.lite.Interpreter is deprecated)
        interpreter.allocate_tensors()

        cqat_test_accuracy = eval_model(interpreter)

        print('Clustered and quantized TFLite test_accuracy:', cqat_test_accuracy)
        print('Clustered TF test accuracy:', clustered_model_accuracy)
        return cqat_test_accuracy

    def test_evaluate_cqat_tflite(self, cqat_test_accuracy, trained, baseline):
        _, cqat_keras_accuracy = trained.cqat_model.evaluate(baseline.test_images, baseline.test_labels, verbose=0)
        assert cqat_test_accuracy >= cqat_keras_accuracy - 0.02

    def test_post_training_quantization(self, stripped_clustered_model, baseline, eval_model,
                                        mnist_representative_data_gen, cqat_test_accuracy):
        content, post_training_test_accuracy = _post_training_quantization(
            stripped_clustered_model, eval_model, mnist_representative_data_gen,
            cqat_test_accuracy, "CQAT")
        assert post_training_test_accuracy > 0.85
        assert sorted(array.size for array, _ in constant_tensors(content).values()) == [108, 20280]


# == Sparsity and cluster preserving QAT (pcqat_example.ipynb) =====================================================

class TestPCQAT:

    @pytest.fixture(scope="class")
    def sparsity_clustered_model(self, stripped_pruned, baseline):
        """Cell 10: sparsity-preserving clustering of the pruned model."""
        stripped_pruned_model = stripped_pruned.stripped_pruned_model
        train_images, train_labels = baseline.train_images, baseline.train_labels
        import kopt
        from kopt.clustering import (
            experimental as cluster,
        )

        cluster_weights = kopt.clustering.cluster_weights
        CentroidInitialization = kopt.clustering.CentroidInitialization

        cluster_weights = cluster.cluster_weights

        clustering_params = {
          'number_of_clusters': 8,
          'cluster_centroids_init': CentroidInitialization.KMEANS_PLUS_PLUS,
          'preserve_sparsity': True
        }

        sparsity_clustered_model = cluster_weights(stripped_pruned_model, **clustering_params)

        sparsity_clustered_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])

        print('Train sparsity preserving clustering model:')
        sparsity_clustered_model.fit(train_images, train_labels,epochs=3, validation_split=0.1)
        return sparsity_clustered_model

    def test_sparsity_preserving_clustering(self, sparsity_clustered_model):
        assert int(sparsity_clustered_model.optimizer.iterations) == 3 * 38
        assert all(isinstance(layer, ClusterWeights) and layer.preserve_sparsity
                   for layer in sparsity_clustered_model.layers if hasattr(layer, "layer"))

    @pytest.fixture(scope="class")
    def stripped_clustered_model(self, sparsity_clustered_model):
        """Cell 11."""
        stripped_clustered_model = kopt.clustering.strip_clustering(sparsity_clustered_model)

        print("Model sparsity:\n")
        print_model_weights_sparsity(stripped_clustered_model)

        print("\nModel clusters:\n")
        print_model_weight_clusters(stripped_clustered_model)
        return stripped_clustered_model

    def test_strip_clustering(self, stripped_clustered_model, capsys):
        print_model_weights_sparsity(stripped_clustered_model)
        print_model_weight_clusters(stripped_clustered_model)
        out = capsys.readouterr().out
        assert all(zeros / size >= 0.5 for zeros, size in _kernel_sparsity(out))
        assert all(count <= 8 for count in _kernel_clusters(out))

    @pytest.fixture(scope="class")
    def trained(self, stripped_clustered_model, baseline):
        """Cell 12: QAT and PCQAT of the pruned, clustered model."""
        train_images, train_labels = baseline.train_images, baseline.train_labels
        # QAT
        qat_model = kopt.quantization.quantize_model(stripped_clustered_model)

        qat_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])
        print('Train qat model:')
        qat_model.fit(train_images, train_labels, batch_size=128, epochs=1, validation_split=0.1)

        # PCQAT
        quant_aware_annotate_model = kopt.quantization.quantize_annotate_model(
                      stripped_clustered_model)
        pcqat_model = kopt.quantization.quantize_apply(
                      quant_aware_annotate_model,
                      kopt.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True))

        pcqat_model.compile(optimizer='adam',
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=['accuracy'])
        print('Train pcqat model:')
        pcqat_model.fit(train_images, train_labels, batch_size=128, epochs=1, validation_split=0.1)
        return types.SimpleNamespace(**locals())

    def test_qat_and_pcqat(self, trained, baseline):
        for model in (trained.qat_model, trained.pcqat_model):
            assert int(model.optimizer.iterations) == 10  # ceil(1212 / 128)
            _, accuracy = model.evaluate(baseline.test_images, baseline.test_labels, verbose=0)
            assert accuracy > 0.85

    def test_print_clusters_and_sparsity(self, trained, capsys):
        qat_model, pcqat_model = trained.qat_model, trained.pcqat_model
        print("QAT Model clusters:")
        print_model_weight_clusters(qat_model)
        print("\nQAT Model sparsity:")
        print_model_weights_sparsity(qat_model)
        print("\nPCQAT Model clusters:")
        print_model_weight_clusters(pcqat_model)
        print("\nPCQAT Model sparsity:")
        print_model_weights_sparsity(pcqat_model)

        qat, pcqat = capsys.readouterr().out.split("PCQAT Model clusters:")
        assert all(count > 8 for count in _kernel_clusters(qat))  # QAT loses both
        assert all(zeros < size / 4 for zeros, size in _kernel_sparsity(qat))
        assert all(zeros / size >= 0.5 for zeros, size in _kernel_sparsity(pcqat))  # PCQAT keeps both
        assert all(count <= 8 for count in _kernel_clusters(pcqat)), pcqat

    @pytest.fixture(scope="class")
    def converted(self, trained):
        """Cell 15: convert both models."""
        qat_model, pcqat_model = trained.qat_model, trained.pcqat_model
        # QAT model
        converter = tf.lite.TFLiteConverter.from_keras_model(qat_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        qat_tflite_model = converter.convert()
        qat_model_file = 'qat_model.tflite'
        # Save the model.
        with open(qat_model_file, 'wb') as f:
            f.write(qat_tflite_model)

        # PCQAT model
        converter = tf.lite.TFLiteConverter.from_keras_model(pcqat_model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        pcqat_tflite_model = converter.convert()
        pcqat_model_file = 'pcqat_model.tflite'
        # Save the model.
        with open(pcqat_model_file, 'wb') as f:
            f.write(pcqat_tflite_model)

        print("QAT model size: ", get_gzipped_model_size(qat_model_file), ' KB')
        print("PCQAT model size: ", get_gzipped_model_size(pcqat_model_file), ' KB')
        return types.SimpleNamespace(**locals())

    def test_convert(self, converted):
        kernels = {array.size: (array, axis) for array, axis in constant_tensors(converted.pcqat_model_file).values()}
        assert sorted(kernels) == [108, 20280]  # both kernels are int8 constants
        for array, axis in kernels.values():
            assert max(values_per_channel(array, axis)) <= 8  # the clusters and
            assert _zeros(array) >= 0.5  # the zeros, in the int8 file
        ops = kopt.convert.inspect(converted.pcqat_tflite_model).op_counts
        assert ops.get("FULLY_CONNECTED") == ops.get("CONV_2D") == 1 and not {"ONE_HOT", "SUM"} & set(ops)
        assert get_gzipped_model_size(converted.pcqat_model_file) < get_gzipped_model_size(converted.qat_model_file)

    def test_evaluate_pcqat_tflite(self, converted, eval_model, trained, baseline):
        pcqat_model_file, baseline_model_accuracy = converted.pcqat_model_file, baseline.baseline_model_accuracy
        interpreter = Interpreter(pcqat_model_file)  # kopt: LiteRT (tf.lite.Interpreter is deprecated)
        interpreter.allocate_tensors()

        pcqat_test_accuracy = eval_model(interpreter)

        print('Pruned, clustered and quantized TFLite test_accuracy:', pcqat_test_accuracy)
        print('Baseline TF test accuracy:', baseline_model_accuracy)

        _, pcqat_keras_accuracy = trained.pcqat_model.evaluate(baseline.test_images, baseline.test_labels, verbose=0)
        assert pcqat_test_accuracy >= pcqat_keras_accuracy - 0.02
