"""Models that int8 quantization hurts for a known reason, with their float function intact (for the mixed-precision
tests): an outlier weight or an outlier activation planted where the float outputs do not see it."""

import keras
import numpy as np


def digits_mlp_cnn(seed=0):
    """Conv 'conv' -> Flatten 'flat' -> Dense 'hidden' (ReLU) -> Dense 'logits', for 8x8x1 digits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 1), name="image"),
                             keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
                             keras.layers.Flatten(name="flat"),
                             keras.layers.Dense(64, activation="relu", name="hidden"),
                             keras.layers.Dense(10, name="logits")])


def plant_weight_outlier(model, value=40.0):
    """Makes hidden unit 0 dead (its weights and bias -1: ReLU gives 0 for inputs >= 0) and gives it outgoing
    weights `value` in 'logits': no float output changes, but per-tensor int8 of the 'logits' kernel takes its
    scale from `value` and rounds the other weights to a few levels."""
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, 0], bias[0] = -1.0, -1.0
    model.get_layer("hidden").set_weights([kernel, bias])
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[0, :] = value
    model.get_layer("logits").set_weights([kernel, bias])
    return model


def plant_activation_outlier(model, factor=300.0):
    """Makes hidden unit 0 output values `factor` times larger and 'logits' ignore it: no float output changes, but
    int8's one scale for the 'hidden' output rounds the other units to a few levels."""
    kernel, bias = model.get_layer("hidden").get_weights()
    kernel[:, 0] = np.abs(kernel[:, 0]) * factor
    model.get_layer("hidden").set_weights([kernel, bias])
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[0, :] = 0.0
    model.get_layer("logits").set_weights([kernel, bias])
    return model


def trained_weight_outlier_digits(x_train, y_train, epochs=8):
    """`digits_mlp_cnn` trained on digits (Adam, `epochs`), then `plant_weight_outlier`: its int8 file loses a few
    points of accuracy that keeping 'logits' float gives back."""
    model = digits_mlp_cnn()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    return plant_weight_outlier(model)
