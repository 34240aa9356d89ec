"""tfmot's pruning-for-on-device-inference guide runs on kopt with only the imports changed.

The code cells of tensorflow/model-optimization's
`tensorflow_model_optimization/g3doc/guide/pruning/pruning_for_on_device_inference.ipynb` (XNNPACK's sparse
inference: `PruneForLatencyOnXNNPack`), one test per cell, with `import tensorflow_model_optimization as tfmot` /
`import tf_keras as keras` replaced:

    tfmot.sparsity.keras      -> kopt.sparsity
    tf_keras / tf.keras       -> keras (Keras 3)

The cells build on each other: each cell that later cells use is a module-scoped fixture holding its code verbatim
(so that any test can run alone or on another pytest-xdist worker), and its test asserts on what it computed. Left
out: the notebook-only `%load_ext tensorboard` / `%tensorboard` and the two `adb shell benchmark_model` cells, which
need an Android phone. Lines that differ from the guide are marked `# kopt:`, changes of this test, not of the API:
CIFAR-10 (`tfds.load`, a download) is scikit-learn's digits shaped like CIFAR-10 (`tfmot_guide_data.tfds`: 32x32x3
uint8 images, the same `train[:90%]` / `train[90%:]` / `test` splits of 1347 + 450 images), and `PolynomialDecay`
gets `frequency=10`: its default, 100, falls after the guide's `end_step` in the 10 steps an epoch that the digits
give, so nothing would be pruned (in tfmot as in kopt).

Two things differ from the guide's text, in tfmot 0.8.1 as in kopt: cell 5 raises no ValueError (tfmot 0.8.1's
policy ends at any GlobalAveragePooling2D, `keepdims` or not; the guide's message is an older tfmot's), and
`evaluate` reports near-chance accuracy: 10 steps an epoch leave BatchNormalization's moving statistics (momentum
0.99) far from the data's, so the accuracy asserts use the batch statistics (`training=True`).
"""

import tempfile
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import kopt
from kopt.sparsity import PruneLowMagnitude


@pytest.fixture(scope="module", autouse=True)
def _temp_files(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("on_device")))  # mkstemp files land here
        yield


def _pointwise(model):
    return [layer for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)]


def _zeros(array):
    return np.count_nonzero(array == 0) / array.size


def _batch_statistics_accuracy(model, ds):
    """Accuracy with BatchNormalization on batch statistics (its moving ones need more steps than digits give)."""
    right = total = 0
    for images, labels in ds:
        right += int(np.sum(np.argmax(model(images, training=True), axis=-1) == labels.numpy()))
        total += len(labels)
    return right / total


# -- cell 3: imports -----------------------------------------------------------------------------------------------

def test_imports():
    import tempfile

    import tensorflow as tf
    import numpy as np

    import keras
    from tfmot_guide_data import tfds  # kopt: digits shaped like CIFAR-10 (tfds.load downloads CIFAR-10)
    import kopt
    import keras  # noqa: F811 (the guide imports Keras twice: tensorflow's, then tf_keras)

    assert callable(tfds.load) and callable(kopt.sparsity.PruneForLatencyOnXNNPack)
    assert tempfile and tf and np and keras


# -- cell 4: data and the dense baseline ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dense():
    from tfmot_guide_data import tfds  # kopt: digits shaped like CIFAR-10
    keras.utils.set_random_seed(0)  # kopt: seeded
    # Load CIFAR10 dataset.
    (ds_train, ds_val, ds_test), ds_info = tfds.load(
        'cifar10',
        split=['train[:90%]', 'train[90%:]', 'test'],
        as_supervised=True,
        with_info=True,
    )

    # Normalize the input image so that each pixel value is between 0 and 1.
    def normalize_img(image, label):
      """Normalizes images: `uint8` -> `float32`."""
      return tf.image.convert_image_dtype(image, tf.float32), label

    # Load the data in batches of 128 images.
    batch_size = 128
    def prepare_dataset(ds, buffer_size=None):
      ds = ds.map(normalize_img, num_parallel_calls=tf.data.experimental.AUTOTUNE)
      ds = ds.cache()
      if buffer_size:
        ds = ds.shuffle(buffer_size)
      ds = ds.batch(batch_size)
      ds = ds.prefetch(tf.data.experimental.AUTOTUNE)
      return ds

    ds_train = prepare_dataset(ds_train,
                               buffer_size=ds_info.splits['train'].num_examples)
    ds_val = prepare_dataset(ds_val)
    ds_test = prepare_dataset(ds_test)

    # Build the dense baseline model.
    dense_model = keras.Sequential([
        keras.layers.InputLayer(input_shape=(32, 32, 3)),
        keras.layers.ZeroPadding2D(padding=1),
        keras.layers.Conv2D(
            filters=8,
            kernel_size=(3, 3),
            strides=(2, 2),
            padding='valid'),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(kernel_size=(3, 3), padding='same'),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(filters=16, kernel_size=(1, 1)),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.ZeroPadding2D(padding=1),
        keras.layers.DepthwiseConv2D(
            kernel_size=(3, 3), strides=(2, 2), padding='valid'),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(filters=32, kernel_size=(1, 1)),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10)
    ])

    # Compile and train the dense model for 10 epochs.
    dense_model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer='adam',
        metrics=['accuracy'])

    dense_model.fit(
      ds_train,
      epochs=10,
      validation_data=ds_val)

    # Evaluate the dense model.
    _, dense_model_accuracy = dense_model.evaluate(ds_test, verbose=0)
    return types.SimpleNamespace(**locals())


def test_train_dense_model(dense):
    assert len(dense.ds_train) == 10 and len(dense.ds_val) == 2 and len(dense.ds_test) == 4  # batches of 128
    images, labels = next(iter(dense.ds_train))
    assert images.shape == (128, 32, 32, 3) and images.dtype == tf.float32 and float(tf.reduce_max(images)) <= 1.0
    assert int(dense.dense_model.optimizer.iterations) == 100
    assert 0 <= dense.dense_model_accuracy <= 1  # near chance: see the module's docstring
    assert _batch_statistics_accuracy(dense.dense_model, dense.ds_test) > 0.3  # 100 steps on 1212 images


# -- cell 5: the policy rejects the model --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def policy(dense):
    dense_model, ds_train = dense.dense_model, dense.ds_train
    prune_low_magnitude = kopt.sparsity.prune_low_magnitude

    # Compute end step to finish pruning after after 5 epochs.
    end_epoch = 5

    num_iterations_per_epoch = len(ds_train)
    end_step =  num_iterations_per_epoch * end_epoch

    # Define parameters for pruning.
    pruning_params = {
          'pruning_schedule': kopt.sparsity.PolynomialDecay(initial_sparsity=0.25,
                                                                   final_sparsity=0.75,
                                                                   begin_step=0,
                                                                   end_step=end_step,
                                                                   frequency=10),  # kopt: see the docstring
          'pruning_policy': kopt.sparsity.PruneForLatencyOnXNNPack()
    }

    # Try to apply pruning wrapper with pruning policy parameter.
    try:
      model_for_pruning = prune_low_magnitude(dense_model, **pruning_params)
    except ValueError as e:
      print(e)
    return types.SimpleNamespace(**locals())


def test_policy_accepts_the_model_as_tfmot_0_8(policy):
    assert policy.end_step == 50
    # The guide expects `ValueError: Could not find a GlobalAveragePooling2D layer with keepdims = True in all output
    # branches`; tfmot 0.8.1 accepts this model and wraps the two 1x1 Conv2D layers, and so does kopt.
    wrapped = [layer.layer for layer in policy.model_for_pruning.layers if isinstance(layer, PruneLowMagnitude)]
    assert [tuple(layer.kernel_size) for layer in wrapped] == [(1, 1), (1, 1)]
    # What the policy rejects (the model tfmot's README asks for starts with ZeroPadding2D + a 3x3 stride-2 Conv2D):
    stemless = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 1),
                                 keras.layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match="Conv2D 3x3"):
        policy.prune_low_magnitude(stemless, **policy.pruning_params)


# -- cell 6: the fixed model ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixed(dense, policy):
    dense_model = dense.dense_model
    prune_low_magnitude, pruning_params = policy.prune_low_magnitude, policy.pruning_params
    fixed_dense_model = keras.Sequential([
        keras.layers.InputLayer(input_shape=(32, 32, 3)),
        keras.layers.ZeroPadding2D(padding=1),
        keras.layers.Conv2D(
            filters=8,
            kernel_size=(3, 3),
            strides=(2, 2),
            padding='valid'),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.DepthwiseConv2D(kernel_size=(3, 3), padding='same'),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(filters=16, kernel_size=(1, 1)),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.ZeroPadding2D(padding=1),
        keras.layers.DepthwiseConv2D(
            kernel_size=(3, 3), strides=(2, 2), padding='valid'),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.Conv2D(filters=32, kernel_size=(1, 1)),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(keepdims=True),
        keras.layers.Flatten(),
        keras.layers.Dense(10)
    ])

    # Use the pretrained model for pruning instead of training from scratch.
    fixed_dense_model.set_weights(dense_model.get_weights())

    # Try to reapply pruning wrapper.
    model_for_pruning = prune_low_magnitude(fixed_dense_model, **pruning_params)
    return types.SimpleNamespace(**locals())


def test_policy_accepts_the_fixed_model(fixed, dense):
    model_for_pruning = fixed.model_for_pruning
    wrapped = [layer.layer for layer in model_for_pruning.layers if isinstance(layer, PruneLowMagnitude)]
    # XNNPACK's sparse inference speeds up 1x1 convolutions: the policy prunes those only (as tfmot's).
    assert [(type(layer), tuple(layer.kernel_size)) for layer in wrapped] == [(keras.layers.Conv2D, (1, 1))] * 2
    images = next(iter(dense.ds_test))[0][:16]
    np.testing.assert_allclose(model_for_pruning.predict(images, verbose=0),
                               dense.dense_model.predict(images, verbose=0), atol=1e-4)  # the trained weights


# -- cell 7: fine-tune with pruning --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned(fixed, dense):
    model_for_pruning, ds_train, ds_val, ds_test = fixed.model_for_pruning, dense.ds_train, dense.ds_val, dense.ds_test
    dense_model_accuracy = dense.dense_model_accuracy
    logdir = tempfile.mkdtemp()

    callbacks = [
      kopt.sparsity.UpdatePruningStep(),
      kopt.sparsity.PruningSummaries(log_dir=logdir),
    ]

    model_for_pruning.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer='adam',
        metrics=['accuracy'])

    model_for_pruning.fit(
      ds_train,
      epochs=15,
      validation_data=ds_val,
      callbacks=callbacks)

    # Evaluate the dense model.
    _, pruned_model_accuracy = model_for_pruning.evaluate(ds_test, verbose=0)

    print('Dense model test accuracy:', dense_model_accuracy)
    print('Pruned model test accuracy:', pruned_model_accuracy)
    return types.SimpleNamespace(**locals())


def test_fine_tune_with_pruning(pruned, dense):
    assert int(pruned.model_for_pruning.optimizer.iterations) == 150
    for layer in _pointwise(kopt.sparsity.strip_pruning(pruned.model_for_pruning)):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        assert _zeros(kernel) == pytest.approx(0.75, abs=1 / kernel.size)  # PolynomialDecay's final sparsity
    assert 0 <= pruned.pruned_model_accuracy <= 1  # near chance: see the module's docstring
    assert _batch_statistics_accuracy(pruned.model_for_pruning, dense.ds_test) > 0.3


# -- cell 9: convert the dense and the pruned model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(dense, pruned):
    dense_model, model_for_pruning = dense.dense_model, pruned.model_for_pruning
    converter = tf.lite.TFLiteConverter.from_keras_model(dense_model)
    dense_tflite_model = converter.convert()

    _, dense_tflite_file = tempfile.mkstemp('.tflite')
    with open(dense_tflite_file, 'wb') as f:
      f.write(dense_tflite_model)

    model_for_export = kopt.sparsity.strip_pruning(model_for_pruning)

    converter = tf.lite.TFLiteConverter.from_keras_model(model_for_export)
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    pruned_tflite_model = converter.convert()

    _, pruned_tflite_file = tempfile.mkstemp('.tflite')
    with open(pruned_tflite_file, 'wb') as f:
      f.write(pruned_tflite_model)
    return types.SimpleNamespace(**locals())


def _run(tflite_file, images):
    interpreter = Interpreter(model_path=tflite_file)  # kopt: LiteRT (tf.lite.Interpreter is deprecated)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    (output,) = runner(**{name: images}).values()
    return output


def test_convert(converted, dense):
    images = next(iter(dense.ds_test))[0].numpy()[:32]
    np.testing.assert_allclose(_run(converted.dense_tflite_file, images),
                               converted.dense_model.predict(images, verbose=0), atol=1e-3)
    np.testing.assert_allclose(_run(converted.pruned_tflite_file, images),
                               converted.model_for_export.predict(images, verbose=0), atol=1e-3)
    # The pruned 1x1 kernels are in the file in TFLite's sparse format (their nonzeros only), each densified by a
    # DENSIFY op for XNNPACK's sparse inference to read; densified in LiteRT they are 75% zeros.
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(open(converted.pruned_tflite_file, "rb").read()))
    graph = model.subgraphs[0]
    densify = [op for op in graph.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "DENSIFY"]
    sparse = [graph.tensors[op.inputs[0]] for op in densify]
    assert [list(t.shape) for t in sparse] == [[16, 1, 1, 8], [32, 1, 1, 16]] and all(t.sparsity for t in sparse)
    for tensor in sparse:
        stored = len(model.buffers[tensor.buffer].data) // 4  # float32 values
        assert stored == pytest.approx(0.25 * np.prod(tensor.shape), abs=1)
    from ai_edge_litert.interpreter import OpResolverType

    interpreter = Interpreter(  # without XNNPACK, which reads the sparse kernels itself and skips DENSIFY
        model_path=converted.pruned_tflite_file, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images[:1])
    interpreter.invoke()
    for op in densify:
        kernel = interpreter.get_tensor(op.outputs[0])
        assert _zeros(kernel) == pytest.approx(0.75, abs=1 / kernel.size)
