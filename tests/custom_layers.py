"""Custom layers the tests share (the tests folder is on sys.path, see conftest.py)."""

import keras


@keras.saving.register_keras_serializable(package="kopt_tests")
class ScaledSum(keras.layers.Layer):
    """`x + branch * scale`, as InceptionResNetV2's scaling layer: no weights, keras.ops arithmetic in its call."""

    def __init__(self, scale=0.2, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        return inputs[0] + inputs[1] * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}
