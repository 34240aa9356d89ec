"""tfmot's comprehensive guides run on kopt with only the imports changed.

The code cells of tensorflow/model-optimization's
`tensorflow_model_optimization/g3doc/guide/pruning/comprehensive_guide.ipynb` and
`.../guide/quantization/training_comprehensive_guide.ipynb`, one test per cell, with
`import tensorflow_model_optimization as tfmot` / `import tf_keras as keras` replaced:

    tfmot.sparsity.keras      -> kopt.sparsity
    tfmot.quantization.keras  -> kopt.quantization
    tf_keras / tf.keras       -> keras (Keras 3)

Two lines differ because Keras 3 itself changed, not kopt (marked `# Keras 3:`):
`save_weights` needs a `.weights.h5` name (the guides use `mkstemp('.tf')`), and
`keras.backend.clip` is `keras.ops.clip`. Where kopt still differs, the verbatim cell is a
strict xfail saying why, and the cells that depend on it give the Sequential a
`keras.Input` instead (marked `# kopt:`). After each cell come asserts on what it computed.
"""

import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import kopt
from kopt.quantization import QuantizeWrapper
from kopt.sparsity import PruneLowMagnitude

input_shape = [20]


@pytest.fixture(autouse=True)
def _temp_files_in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the guides' mkstemp/mkdtemp files land here


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(1, 20)).astype(np.float32)
    y_train = keras.utils.to_categorical(rng.normal(size=1), num_classes=20)
    return x_train, y_train


# -- the guides' setup cell ---------------------------------------------------------------------------

def setup_model():
    model = keras.Sequential([
        keras.layers.Dense(20, input_shape=input_shape),
        keras.layers.Flatten()
    ])
    return model


@pytest.fixture()
def pretrained_weights(data):
    x_train, y_train = data

    def setup_pretrained_weights():
        model = setup_model()

        model.compile(
            loss=keras.losses.categorical_crossentropy,
            optimizer='adam',
            metrics=['accuracy']
        )

        model.fit(x_train, y_train, verbose=0)

        _, pretrained_weights = tempfile.mkstemp('.weights.h5')  # Keras 3: the guides use '.tf'

        model.save_weights(pretrained_weights)

        return pretrained_weights

    return setup_pretrained_weights()


def get_gzipped_model_size(model):
    # Returns size of gzipped model, in bytes.
    import os
    import zipfile

    _, keras_file = tempfile.mkstemp('.h5')
    model.save(keras_file, include_optimizer=False)

    _, zipped_file = tempfile.mkstemp('.zip')
    with zipfile.ZipFile(zipped_file, 'w', compression=zipfile.ZIP_DEFLATED) as f:
        f.write(keras_file)

    return os.path.getsize(zipped_file)


def _pretrained_kernel(pretrained_weights):
    model = setup_model()
    model.load_weights(pretrained_weights)
    return keras.ops.convert_to_numpy(model.layers[0].kernel)


def _read_scalars(directory):
    scalars = {}
    for path in tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    return scalars


# == Pruning comprehensive guide =======================================================================

def test_prune_whole_model(pretrained_weights):
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended.

    model_for_pruning = kopt.sparsity.prune_low_magnitude(base_model)

    model_for_pruning.summary()

    assert [type(layer) for layer in model_for_pruning.layers] == [PruneLowMagnitude, keras.layers.Flatten]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model_for_pruning.layers[0].layer.kernel),
                                  _pretrained_kernel(pretrained_weights))


def test_prune_some_layers_with_clone_model(pretrained_weights, data):
    # Create a base model
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy

    # Helper function uses `prune_low_magnitude` to make only the
    # Dense layers train with pruning.
    def apply_pruning_to_dense(layer):
        if isinstance(layer, keras.layers.Dense):
            return kopt.sparsity.prune_low_magnitude(layer)
        return layer

    # Use `keras.models.clone_model` to apply `apply_pruning_to_dense`
    # to the layers of the model.
    model_for_pruning = keras.models.clone_model(
        base_model,
        clone_function=apply_pruning_to_dense,
    )

    model_for_pruning.summary()

    print(base_model.layers[0].name)

    assert [type(layer) for layer in model_for_pruning.layers] == [PruneLowMagnitude, keras.layers.Flatten]
    x_train, y_train = data
    model_for_pruning.compile("adam", "categorical_crossentropy")
    model_for_pruning.fit(x_train, y_train, epochs=2, verbose=0, callbacks=[kopt.sparsity.UpdatePruningStep()])
    assert int(keras.ops.convert_to_numpy(model_for_pruning.layers[0].pruning_step)) == 2


def test_prune_functional_example():
    # Use `prune_low_magnitude` to make the `Dense` layer train with pruning.
    i = keras.Input(shape=(20,))
    x = kopt.sparsity.prune_low_magnitude(keras.layers.Dense(10))(i)
    o = keras.layers.Flatten()(x)
    model_for_pruning = keras.Model(inputs=i, outputs=o)

    model_for_pruning.summary()

    assert isinstance(model_for_pruning.layers[1], PruneLowMagnitude)
    assert model_for_pruning.output.shape == (None, 10)


def test_prune_sequential_example():
    # Use `prune_low_magnitude` to make the `Dense` layer train with pruning.
    model_for_pruning = keras.Sequential([
        kopt.sparsity.prune_low_magnitude(keras.layers.Dense(20, input_shape=input_shape)),
        keras.layers.Flatten()
    ])

    model_for_pruning.summary()

    assert isinstance(model_for_pruning.layers[0], PruneLowMagnitude)
    assert model_for_pruning(np.zeros((2, 20), "float32")).shape == (2, 20)


def test_prune_sequential_example_is_built_from_input_shape():
    model_for_pruning = keras.Sequential([
        kopt.sparsity.prune_low_magnitude(keras.layers.Dense(20, input_shape=input_shape)),
        keras.layers.Flatten()
    ])
    assert model_for_pruning.built  # tfmot's is: its summary shows the parameters


def test_prune_custom_layer_and_bias():
    class MyDenseLayer(keras.layers.Dense, kopt.sparsity.PrunableLayer):

        def get_prunable_weights(self):
            # Prune bias also, though that usually harms model accuracy too much.
            return [self.kernel, self.bias]

    # Use `prune_low_magnitude` to make the `MyDenseLayer` layer train with pruning.
    model_for_pruning = keras.Sequential([
        kopt.sparsity.prune_low_magnitude(MyDenseLayer(20, input_shape=input_shape)),
        keras.layers.Flatten()
    ])

    model_for_pruning.summary()

    model_for_pruning(np.zeros((1, 20), "float32"))
    wrapper = model_for_pruning.layers[0]
    assert [mask.shape for mask in wrapper.masks] == [(20, 20), (20,)]


def test_prune_model_fit_with_pruning_summaries(pretrained_weights, data):
    x_train, y_train = data
    # Define the model.
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy
    model_for_pruning = kopt.sparsity.prune_low_magnitude(base_model)

    log_dir = tempfile.mkdtemp()
    callbacks = [
        kopt.sparsity.UpdatePruningStep(),
        # Log sparsity and other metrics in Tensorboard.
        kopt.sparsity.PruningSummaries(log_dir=log_dir)
    ]

    model_for_pruning.compile(
          loss=keras.losses.categorical_crossentropy,
          optimizer='adam',
          metrics=['accuracy']
    )

    model_for_pruning.fit(
        x_train,
        y_train,
        callbacks=callbacks,
        epochs=2,
    )

    scalars = _read_scalars(os.path.join(log_dir, "metrics"))
    name = model_for_pruning.layers[0].name
    assert {f"{name}/mask:0/sparsity", f"{name}/threshold:0/threshold"} <= set(scalars)  # tfmot's tags
    assert [step for step, _ in scalars[f"{name}/mask:0/sparsity"]][:2] == [0, 1]  # at each epoch's start


def test_prune_custom_training_loop(pretrained_weights, data):
    x_train, y_train = data
    # Define the model.
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy
    model_for_pruning = kopt.sparsity.prune_low_magnitude(  # (not in the guide: a schedule that prunes in 2 steps)
        base_model, pruning_schedule=kopt.sparsity.ConstantSparsity(0.5, 0, frequency=1))

    # Boilerplate
    loss = keras.losses.categorical_crossentropy
    optimizer = keras.optimizers.Adam()
    log_dir = tempfile.mkdtemp()
    unused_arg = -1
    epochs = 2
    batches = 1 # example is hardcoded so that the number of batches cannot change.

    # Non-boilerplate.
    model_for_pruning.optimizer = optimizer
    step_callback = kopt.sparsity.UpdatePruningStep()
    step_callback.set_model(model_for_pruning)
    log_callback = kopt.sparsity.PruningSummaries(log_dir=log_dir) # Log sparsity and other metrics in Tensorboard.
    log_callback.set_model(model_for_pruning)

    step_callback.on_train_begin() # run pruning callback
    for _ in range(epochs):
        log_callback.on_epoch_begin(epoch=unused_arg) # run pruning callback
        for _ in range(batches):
            step_callback.on_train_batch_begin(batch=unused_arg) # run pruning callback

            with tf.GradientTape() as tape:
                logits = model_for_pruning(x_train, training=True)
                loss_value = loss(y_train, logits)
                grads = tape.gradient(loss_value, model_for_pruning.trainable_variables)
                optimizer.apply_gradients(zip(grads, model_for_pruning.trainable_variables))

        step_callback.on_epoch_end(batch=unused_arg) # run pruning callback

    kernel = keras.ops.convert_to_numpy(model_for_pruning.layers[0].layer.kernel)
    assert np.mean(kernel == 0) == pytest.approx(0.5)  # on_epoch_end wrote weight * mask
    scalars = _read_scalars(os.path.join(log_dir, "metrics"))
    sparsity = scalars[f"{model_for_pruning.layers[0].name}/mask:0/sparsity"]
    assert sparsity == [(0, 0.0), (1, pytest.approx(0.5))]  # at the optimizer's step, as tfmot


def test_prune_checkpoint_and_deserialize(pretrained_weights, data):
    x_train, _ = data
    # Define the model.
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy
    model_for_pruning = kopt.sparsity.prune_low_magnitude(base_model)

    _, keras_model_file = tempfile.mkstemp('.h5')

    # Checkpoint: saving the optimizer is necessary (include_optimizer=True is the default).
    model_for_pruning.save(keras_model_file, include_optimizer=True)

    # Deserialize model.
    with kopt.sparsity.prune_scope():
        loaded_model = keras.models.load_model(keras_model_file)

    loaded_model.summary()

    assert isinstance(loaded_model.layers[0], PruneLowMagnitude)
    np.testing.assert_array_equal(loaded_model.predict(x_train, verbose=0), model_for_pruning.predict(x_train, verbose=0))


def test_prune_scope_loads_custom_prunable_layers(tmp_path, data):
    x_train, _ = data

    class MyDenseLayer(keras.layers.Dense, kopt.sparsity.PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel, self.bias]

    model = keras.Sequential([keras.Input((20,)), kopt.sparsity.prune_low_magnitude(MyDenseLayer(4))])
    path = os.fspath(tmp_path / "pruned.keras")
    model.save(path)
    with pytest.raises(TypeError, match="MyDenseLayer"):
        keras.models.load_model(path)  # a class defined in a function is found only through a scope
    with kopt.sparsity.prune_scope({"MyDenseLayer": MyDenseLayer}):
        loaded = keras.models.load_model(path)
    assert type(loaded.layers[0].layer) is MyDenseLayer
    np.testing.assert_array_equal(loaded.predict(x_train, verbose=0), model.predict(x_train, verbose=0))
    with pytest.raises(ValueError, match="dicts"):
        kopt.sparsity.prune_scope(MyDenseLayer)


def test_prune_export_with_strip_pruning(pretrained_weights):
    # Define the model.
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy
    model_for_pruning = kopt.sparsity.prune_low_magnitude(base_model)

    # Typically you train the model here.

    model_for_export = kopt.sparsity.strip_pruning(model_for_pruning)

    print("final model")
    model_for_export.summary()

    print("\n")
    print("Size of gzipped pruned model without stripping: %.2f bytes" % (get_gzipped_model_size(model_for_pruning)))
    print("Size of gzipped pruned model with stripping: %.2f bytes" % (get_gzipped_model_size(model_for_export)))

    assert [type(layer) for layer in model_for_export.layers] == [keras.layers.Dense, keras.layers.Flatten]
    assert get_gzipped_model_size(model_for_export) < get_gzipped_model_size(model_for_pruning)


def test_prune_train_then_export_reaches_the_sparsity(pretrained_weights, data):
    """The guide's fit + strip_pruning with a schedule that prunes within its few steps."""
    x_train, y_train = data
    base_model = setup_model()
    base_model.load_weights(pretrained_weights)
    model_for_pruning = kopt.sparsity.prune_low_magnitude(
        base_model, pruning_schedule=kopt.sparsity.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=4, frequency=1))
    model_for_pruning.compile(loss=keras.losses.categorical_crossentropy, optimizer='adam')
    model_for_pruning.fit(np.repeat(x_train, 5, 0), np.repeat(y_train, 5, 0), batch_size=1, epochs=1, verbose=0,
                          callbacks=[kopt.sparsity.UpdatePruningStep()])
    model_for_export = kopt.sparsity.strip_pruning(model_for_pruning)
    kernel = keras.ops.convert_to_numpy(model_for_export.layers[0].kernel)
    assert np.mean(kernel == 0) == pytest.approx(0.8)
    np.testing.assert_allclose(model_for_export.predict(x_train, verbose=0),
                               model_for_pruning.predict(x_train, verbose=0), atol=1e-6)


def test_prune_with_block_sparsity(data):
    base_model = setup_model()

    # For using intrinsics on a CPU with 128-bit registers, together with 8-bit
    # quantized weights, a 1x16 block size is nice because the block perfectly
    # fits into the register.
    pruning_params = {'block_size': [1, 16]}
    model_for_pruning = kopt.sparsity.prune_low_magnitude(base_model, **pruning_params)

    model_for_pruning.summary()

    assert model_for_pruning.layers[0].block_size == (1, 16)
    # The default schedule, ConstantSparsity(0.5, 0) with frequency 100, prunes once a fit has run 100 steps (as tfmot).
    x_train, y_train = data
    model_for_pruning.compile(loss=keras.losses.categorical_crossentropy, optimizer='adam')
    model_for_pruning.fit(np.repeat(x_train, 101, 0), np.repeat(y_train, 101, 0), batch_size=1, epochs=1, verbose=0,
                          callbacks=[kopt.sparsity.UpdatePruningStep()])
    kernel = keras.ops.convert_to_numpy(kopt.sparsity.strip_pruning(model_for_pruning).layers[0].kernel)
    # tfmot's block sparsity: zeros come in whole 1x16 blocks. The 20 columns are not a multiple of 16: each row
    # holds a 16-wide block (columns 0-15) and the 4 columns left (16-19), a block of its own (the mask is the one
    # tfmot makes for this very kernel shape: tests/sparsity/test_masks.py).
    zero = kernel == 0
    for block in (zero[:, :16], zero[:, 16:]):
        assert np.array_equal(block.all(axis=1), block.any(axis=1))  # no block is partly zero
    zero_blocks = zero[:, :16].all(axis=1).sum() + zero[:, 16:].all(axis=1).sum()
    assert zero_blocks == 20  # half of the 40 blocks, ConstantSparsity(0.5)


# == Quantization aware training comprehensive guide ====================================================

def _kinds(model):
    return [type(layer).__name__ for layer in model.layers]


def test_quantize_whole_model(pretrained_weights, data):
    x_train, _ = data
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy

    quant_aware_model = kopt.quantization.quantize_model(base_model)
    quant_aware_model.summary()

    assert _kinds(quant_aware_model) == ["QuantizeLayer", "QuantizeWrapper", "Flatten"]
    # Untrained, the activation ranges are the initial [-6, 6]: the output is on that 8-bit grid.
    step = 12.0 / 255
    np.testing.assert_allclose(quant_aware_model.predict(x_train, verbose=0), base_model.predict(x_train, verbose=0),
                               atol=2 * step)


def test_quantize_some_layers_with_clone_model(pretrained_weights):
    # Create a base model
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy

    # Helper function uses `quantize_annotate_layer` to annotate that only the
    # Dense layers should be quantized.
    def apply_quantization_to_dense(layer):
        if isinstance(layer, keras.layers.Dense):
            return kopt.quantization.quantize_annotate_layer(layer)
        return layer

    # Use `keras.models.clone_model` to apply `apply_quantization_to_dense`
    # to the layers of the model.
    annotated_model = keras.models.clone_model(
        base_model,
        clone_function=apply_quantization_to_dense,
    )

    # Now that the Dense layers are annotated,
    # `quantize_apply` actually makes the model quantization aware.
    quant_aware_model = kopt.quantization.quantize_apply(annotated_model)
    quant_aware_model.summary()

    print(base_model.layers[0].name)

    assert _kinds(quant_aware_model) == ["QuantizeLayer", "QuantizeWrapper", "Flatten"]
    wrapper = quant_aware_model.layers[1]
    kernel_max = keras.ops.convert_to_numpy(wrapper._weight_states[0]["max"])
    assert kernel_max == pytest.approx(np.abs(_pretrained_kernel(pretrained_weights)).max())  # per tensor


def test_quantize_functional_example():
    # Use `quantize_annotate_layer` to annotate that the `Dense` layer
    # should be quantized.
    i = keras.Input(shape=(20,))
    x = kopt.quantization.quantize_annotate_layer(keras.layers.Dense(10))(i)
    o = keras.layers.Flatten()(x)
    annotated_model = keras.Model(inputs=i, outputs=o)

    # Use `quantize_apply` to actually make the model quantization aware.
    quant_aware_model = kopt.quantization.quantize_apply(annotated_model)

    # For deployment purposes, the tool adds `QuantizeLayer` after `InputLayer` so that the
    # quantized model can take in float inputs instead of only uint8.
    quant_aware_model.summary()

    assert _kinds(quant_aware_model) == ["InputLayer", "QuantizeLayer", "QuantizeWrapper", "Flatten"]


def test_quantize_sequential_example():
    # Use `quantize_annotate_layer` to annotate that the `Dense` layer
    # should be quantized.
    annotated_model = keras.Sequential([
        kopt.quantization.quantize_annotate_layer(keras.layers.Dense(20, input_shape=input_shape)),
        keras.layers.Flatten()
    ])

    # Use `quantize_apply` to actually make the model quantization aware.
    quant_aware_model = kopt.quantization.quantize_apply(annotated_model)

    quant_aware_model.summary()

    assert _kinds(quant_aware_model) == ["QuantizeLayer", "QuantizeWrapper", "Flatten"]
    wrapper = quant_aware_model.layers[1]
    assert isinstance(wrapper, QuantizeWrapper) and isinstance(wrapper.layer, keras.layers.Dense)
    assert wrapper.layer.units == 20
    # The annotated Dense computes as a float Dense, on the 8-bit grid of its output range (untrained: [-6, 6]).
    x = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (wrapper.layer.kernel, wrapper.layer.bias))
    np.testing.assert_allclose(quant_aware_model.predict(x, verbose=0), np.clip(x @ kernel + bias, -6, 6),
                               atol=2 * 12.0 / 255)


def test_quantize_checkpoint_and_deserialize(pretrained_weights, data):
    x_train, y_train = data
    # Define the model.
    base_model = setup_model()
    base_model.load_weights(pretrained_weights) # optional but recommended for model accuracy
    quant_aware_model = kopt.quantization.quantize_model(base_model)

    quant_aware_model.compile("adam", "categorical_crossentropy")
    quant_aware_model.fit(x_train, y_train, epochs=2, verbose=0)  # ranges that are not the initial ones

    # Save or checkpoint the model.
    _, keras_model_file = tempfile.mkstemp('.h5')
    quant_aware_model.save(keras_model_file)

    # `quantize_scope` is needed for deserializing HDF5 models.
    with kopt.quantization.quantize_scope():
        loaded_model = keras.models.load_model(keras_model_file)

    loaded_model.summary()

    assert _kinds(loaded_model) == _kinds(quant_aware_model)
    for a, b in zip(loaded_model.non_trainable_weights, quant_aware_model.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    np.testing.assert_array_equal(loaded_model.predict(x_train, verbose=0),
                                  quant_aware_model.predict(x_train, verbose=0))


def test_quantize_create_and_deploy(pretrained_weights, data):
    x_train, _ = data

    def setup_pretrained_model():
        model = setup_model()
        model.load_weights(pretrained_weights)
        return model

    base_model = setup_pretrained_model()
    quant_aware_model = kopt.quantization.quantize_model(base_model)

    # Typically you train the model here.

    converter = tf.lite.TFLiteConverter.from_keras_model(quant_aware_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    quantized_tflite_model = converter.convert()

    info = kopt.convert.inspect(quantized_tflite_model)
    assert info.op_counts.get("FULLY_CONNECTED") == 1
    assert any(t["dtype"] == "int8" and t["constant"] for t in info.tensors)  # int8 weights
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=quantized_tflite_model)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x_train)
    interpreter.invoke()
    tflite_output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(tflite_output, quant_aware_model.predict(x_train, verbose=0), atol=0.05)


# -- Experiment with quantization ------------------------------------------------------------------

LastValueQuantizer = kopt.quantization.quantizers.LastValueQuantizer
MovingAverageQuantizer = kopt.quantization.quantizers.MovingAverageQuantizer


class DefaultDenseQuantizeConfig(kopt.quantization.QuantizeConfig):
    # Configure how to quantize weights.
    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, LastValueQuantizer(num_bits=8, symmetric=True, narrow_range=False, per_axis=False))]

    # Configure how to quantize activations.
    def get_activations_and_quantizers(self, layer):
        return [(layer.activation, MovingAverageQuantizer(num_bits=8, symmetric=False, narrow_range=False, per_axis=False))]

    def set_quantize_weights(self, layer, quantize_weights):
        # Add this line for each item returned in `get_weights_and_quantizers`
        # , in the same order
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        # Add this line for each item returned in `get_activations_and_quantizers`
        # , in the same order.
        layer.activation = quantize_activations[0]

    # Configure how to quantize outputs (may be equivalent to activations).
    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


quantize_annotate_layer = kopt.quantization.quantize_annotate_layer
quantize_annotate_model = kopt.quantization.quantize_annotate_model
quantize_scope = kopt.quantization.quantize_scope

# kopt: the guide gives `input_shape=(20,)` to the annotated layer (test_quantize_sequential_example runs that
# verbatim); these cells give the Sequential a `keras.Input` instead.


def _wrapper(model):
    [wrapper] = [layer for layer in model.layers if isinstance(layer, QuantizeWrapper)]
    return wrapper


def _fake_quantized_kernel(wrapper):
    (variable, quantizer), state = wrapper._weights_and_quantizers[0], wrapper._weight_states[0]
    return keras.ops.convert_to_numpy(quantizer(variable, False, state))


def _dense_output(model, x):
    """What the quantized Dense computes before its activation: quantized input @ quantized kernel + bias."""
    assert _kinds(model) == ["QuantizeLayer", "QuantizeWrapper", "Flatten"]
    wrapper = model.layers[1]
    quantized_input = keras.ops.convert_to_numpy(model.layers[0](x))
    return quantized_input @ _fake_quantized_kernel(wrapper) + keras.ops.convert_to_numpy(wrapper.layer.bias)


def test_quantize_custom_keras_layer(data):
    x_train, _ = data

    class CustomLayer(keras.layers.Dense):
        pass

    model = quantize_annotate_model(keras.Sequential([
       keras.Input(shape=(20,)), quantize_annotate_layer(CustomLayer(20), DefaultDenseQuantizeConfig()),
       keras.layers.Flatten()
    ]))

    # `quantize_apply` requires mentioning `DefaultDenseQuantizeConfig` with `quantize_scope`
    # as well as the custom Keras layer.
    with quantize_scope(
      {'DefaultDenseQuantizeConfig': DefaultDenseQuantizeConfig,
       'CustomLayer': CustomLayer}):
        # Use `quantize_apply` to actually make the model quantization aware.
        quant_aware_model = kopt.quantization.quantize_apply(model)

    quant_aware_model.summary()

    # kopt runs the config's own quantizers: LastValue for the kernel, tfmot's EMA for the activation.
    wrapper = _wrapper(quant_aware_model)
    assert type(wrapper.layer) is CustomLayer
    x = np.concatenate([x_train, -x_train])
    quant_aware_model(x, training=True)
    kernel = keras.ops.convert_to_numpy(wrapper.layer.kernel)
    ratio = -254 / 256  # symmetric, not narrow: tfmot's min_max_ratio
    weights = {k: float(keras.ops.convert_to_numpy(v)) for k, v in wrapper._weight_states[0].items()}
    assert weights["min"] == pytest.approx(min(kernel.min(), kernel.max() / ratio))
    assert weights["max"] == pytest.approx(max(kernel.max(), kernel.min() * ratio))
    dense_out = _dense_output(quant_aware_model, x)
    activation = {k: float(keras.ops.convert_to_numpy(v)) for k, v in wrapper._activation_state.items()}
    assert activation["max"] == pytest.approx(6.0 * 0.999 + max(dense_out.max(), 0) * 0.001, rel=1e-6)
    assert activation["min"] == pytest.approx(-6.0 * 0.999 + min(dense_out.min(), 0) * 0.001, rel=1e-6)


def test_quantize_custom_config_saves_and_loads_in_quantize_scope(data, tmp_path):
    x_train, y_train = data

    class CustomLayer(keras.layers.Dense):
        pass

    model = quantize_annotate_model(keras.Sequential([
       keras.Input(shape=(20,)), quantize_annotate_layer(CustomLayer(20), DefaultDenseQuantizeConfig()), keras.layers.Flatten()]))
    quant_aware_model = kopt.quantization.quantize_apply(model)
    quant_aware_model.compile("adam", "categorical_crossentropy")
    quant_aware_model.fit(x_train, y_train, epochs=2, verbose=0)
    path = os.fspath(tmp_path / "qat.keras")
    quant_aware_model.save(path)
    with pytest.raises(TypeError):
        keras.models.load_model(path)  # the config and layer classes are only known through the scope
    with quantize_scope({'DefaultDenseQuantizeConfig': DefaultDenseQuantizeConfig, 'CustomLayer': CustomLayer}):
        loaded = keras.models.load_model(path)
    assert type(_wrapper(loaded).quantize_config) is DefaultDenseQuantizeConfig
    np.testing.assert_array_equal(loaded.predict(x_train, verbose=0), quant_aware_model.predict(x_train, verbose=0))
    with pytest.raises(ValueError, match="dicts"):
        quantize_scope(DefaultDenseQuantizeConfig)


def test_modify_quantization_parameters():
    class ModifiedDenseQuantizeConfig(DefaultDenseQuantizeConfig):
        # Configure weights to quantize with 4-bit instead of 8-bits.
        def get_weights_and_quantizers(self, layer):
            return [(layer.kernel, LastValueQuantizer(num_bits=4, symmetric=True, narrow_range=False, per_axis=False))]

    model = quantize_annotate_model(keras.Sequential([
       # Pass in modified `QuantizeConfig` to modify this Dense layer.
       keras.Input(shape=(20,)), quantize_annotate_layer(keras.layers.Dense(20), ModifiedDenseQuantizeConfig()),
       keras.layers.Flatten()
    ]))

    # `quantize_apply` requires mentioning `ModifiedDenseQuantizeConfig` with `quantize_scope`:
    with quantize_scope(
      {'ModifiedDenseQuantizeConfig': ModifiedDenseQuantizeConfig}):
        # Use `quantize_apply` to actually make the model quantization aware.
        quant_aware_model = kopt.quantization.quantize_apply(model)

    quant_aware_model.summary()

    assert len(np.unique(_fake_quantized_kernel(_wrapper(quant_aware_model)))) <= 16  # 4 bits


def test_modify_parts_of_layer_to_quantize():
    class ModifiedDenseQuantizeConfig(DefaultDenseQuantizeConfig):
        def get_activations_and_quantizers(self, layer):
            # Skip quantizing activations.
            return []

        def set_quantize_activations(self, layer, quantize_activations):
            # Empty since `get_activaations_and_quantizers` returns
            # an empty list.
            return

    model = quantize_annotate_model(keras.Sequential([
       # Pass in modified `QuantizeConfig` to modify this Dense layer.
       keras.Input(shape=(20,)), quantize_annotate_layer(keras.layers.Dense(20), ModifiedDenseQuantizeConfig()),
       keras.layers.Flatten()
    ]))

    # `quantize_apply` requires mentioning `ModifiedDenseQuantizeConfig` with `quantize_scope`:
    with quantize_scope(
      {'ModifiedDenseQuantizeConfig': ModifiedDenseQuantizeConfig}):
        # Use `quantize_apply` to actually make the model quantization aware.
        quant_aware_model = kopt.quantization.quantize_apply(model)

    quant_aware_model.summary()

    # No activation quantizer: the output is exactly quantized input @ quantized kernel + bias.
    wrapper = _wrapper(quant_aware_model)
    assert wrapper._activation_quantizer is None and not wrapper._output_quantizers
    x = np.random.default_rng(1).normal(size=(8, 20)).astype("float32")
    np.testing.assert_allclose(quant_aware_model.predict(x, verbose=0), _dense_output(quant_aware_model, x), atol=1e-5)


def test_use_custom_quantization_algorithm():
    class FixedRangeQuantizer(kopt.quantization.quantizers.Quantizer):
        """Quantizer which forces outputs to be between -1 and 1."""

        def build(self, tensor_shape, name, layer):
            # Not needed. No new TensorFlow variables needed.
            return {}

        def __call__(self, inputs, training, weights, **kwargs):
            return keras.ops.clip(inputs, -1.0, 1.0)  # Keras 3: keras.backend.clip

        def get_config(self):
            # Not needed. No __init__ parameters to serialize.
            return {}

    class ModifiedDenseQuantizeConfig(DefaultDenseQuantizeConfig):
        # Configure weights to quantize with 4-bit instead of 8-bits.
        def get_weights_and_quantizers(self, layer):
            # Use custom algorithm defined in `FixedRangeQuantizer` instead of default Quantizer.
            return [(layer.kernel, FixedRangeQuantizer())]

    model = quantize_annotate_model(keras.Sequential([
       # Pass in modified `QuantizeConfig` to modify this `Dense` layer.
       keras.Input(shape=(20,)), quantize_annotate_layer(keras.layers.Dense(20), ModifiedDenseQuantizeConfig()),
       keras.layers.Flatten()
    ]))

    # `quantize_apply` requires mentioning `ModifiedDenseQuantizeConfig` with `quantize_scope`:
    with quantize_scope(
      {'ModifiedDenseQuantizeConfig': ModifiedDenseQuantizeConfig}):
        # Use `quantize_apply` to actually make the model quantization aware.
        quant_aware_model = kopt.quantization.quantize_apply(model)

    quant_aware_model.summary()

    # The layer computes with the clipped kernel: 3 on the diagonal acts as 1.
    wrapper = _wrapper(quant_aware_model)
    wrapper.layer.kernel.assign(3.0 * np.eye(20, dtype="float32"))
    x = 0.5 * np.eye(20, dtype="float32")
    step = 12.0 / 255  # the activation's untrained [-6, 6] range
    np.testing.assert_allclose(np.diag(quant_aware_model.predict(x, verbose=0)), 0.5, atol=2 * step)
