"""QuantizeScheme: quantize_apply / quantize_model take tfmot's scheme and name prefix; the default is plain QAT."""

import inspect
import re

import keras
import numpy as np
import pytest

import kopt
from kopt import convert, quantization
from kopt.experimental.combine import Default8BitPrunePreserveQuantizeScheme
from kopt.quantization._overrides import OverriddenQuantizeConfig
from kopt.quantization.default_8bit import Default8BitQuantizeRegistry, Default8BitQuantizeScheme
from tests.quantization.int8_weights import int8_weights


def _cnn():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, name="depthwise"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="dense"),
    ])


def _data(n=48):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 3)).astype("float32"), np.arange(n) % 3


def _with_zeros(model):
    for name in ("conv", "dense"):
        layer = model.get_layer(name)
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.5)] = 0.0
        layer.kernel.assign(kernel)
    return model


def _fit(qat, learning_rate=1e-2):
    x, y = _data()
    qat.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    return qat


def _zeros(qat, name, prefix="quant_"):
    return keras.ops.convert_to_numpy(qat.get_layer(prefix + name).layer.kernel) == 0


@pytest.mark.parametrize("make", [
    lambda m: quantization.quantize_model(m),
    lambda m: quantization.quantize_apply(quantization.quantize_annotate_model(m)),
    lambda m: quantization.quantize_model(m, quantize_scheme=Default8BitQuantizeScheme()),
    lambda m: quantization.quantize_model(m, preserve_sparsity=False),
])
def test_the_default_is_plain_qat_as_in_tfmot(make):
    model = _with_zeros(_cnn())
    qat = _fit(make(model))
    assert not any(w.preserve_sparsity for w in qat.layers if isinstance(w, quantization.QuantizeWrapper))
    for name in ("conv", "dense"):
        original = keras.ops.convert_to_numpy(model.get_layer(name).kernel) == 0
        assert _zeros(qat, name)[original].mean() < 0.2  # the zeros trained like any weight


@pytest.mark.parametrize("make", [
    lambda m: quantization.quantize_model(m, quantize_scheme=Default8BitPrunePreserveQuantizeScheme()),
    lambda m: quantization.quantize_apply(quantization.quantize_annotate_model(m),
                                          Default8BitPrunePreserveQuantizeScheme()),
    lambda m: quantization.quantize_model(m, Default8BitPrunePreserveQuantizeScheme()),  # the scheme second
    lambda m: quantization.quantize_model(m, preserve_sparsity=True),  # kopt's older keyword
    lambda m: quantization.quantize_apply(quantization.quantize_annotate_model(m), preserve_sparsity=True),
])
def test_the_prune_preserve_scheme_and_the_old_keyword_keep_the_zeros(make):
    model = _with_zeros(_cnn())
    qat = _fit(make(model))
    for name in ("conv", "dense"):
        original = keras.ops.convert_to_numpy(model.get_layer(name).kernel) == 0
        np.testing.assert_array_equal(_zeros(qat, name), original)
    assert not qat.get_layer("quant_depthwise").preserve_sparsity  # no zeros: no mask, no extra work


def test_quantized_layer_name_prefix():
    model = _cnn()
    qat = quantization.quantize_model(model, "q8_")
    assert [layer.name for layer in qat.layers[1:]] == ["q8_conv", "q8_depthwise", "flatten", "q8_dense"]
    qat = quantization.quantize_apply(quantization.quantize_annotate_model(model), None, None)
    assert [layer.name for layer in qat.layers[1:]] == ["conv", "depthwise", "flatten", "dense"]
    x, _ = _data()
    assert qat.predict(x, verbose=0).shape == (48, 3)


def test_bad_arguments_name_the_fix():
    model = _cnn()
    with pytest.raises(ValueError, match="quantize_scheme.*preserve_sparsity|not both"):
        quantization.quantize_model(model, quantize_scheme=Default8BitQuantizeScheme(), preserve_sparsity=True)
    with pytest.raises(ValueError, match="`scheme` must be a kopt.quantization.QuantizeScheme"):
        quantization.quantize_apply(quantization.quantize_annotate_model(model), "default_8bit")
    with pytest.raises(ValueError, match="Two schemes"):
        quantization.quantize_model(model, Default8BitQuantizeScheme(), quantize_scheme=Default8BitQuantizeScheme())
    with pytest.raises(ValueError, match="quantized_layer_name_prefix"):
        quantization.quantize_model(model, 8)
    with pytest.raises(ValueError, match="preserve_sparsity"):
        quantization.quantize_model(model, preserve_sparsity="yes")


def _scales(content):
    """{rank-4 weight: number of scales} of the file: the Conv2D filter and the DepthwiseConv2D kernel."""
    return sorted(scales for _, values, _, scales in int8_weights(content) if values.ndim == 4)


def test_disable_per_axis_quantizes_conv_kernels_per_tensor_into_the_file():
    x, _ = _data()
    per_axis = _fit(quantization.quantize_model(_cnn()))
    per_tensor = _fit(quantization.quantize_model(
        _cnn(), quantize_scheme=Default8BitQuantizeScheme(disable_per_axis=True)))
    for qat in (per_axis, per_tensor):  # Dense kernels are per tensor either way
        wrapper = qat.get_layer("quant_dense")
        assert wrapper.quantize_config.get_weights_and_quantizers(wrapper.layer)[0][1].per_axis is False
    assert _scales(convert.to_tflite(per_axis, validation_data=x)) == [6, 6]  # one scale per output channel
    assert _scales(convert.to_tflite(per_tensor, validation_data=x)) == [1, 1]


def test_a_scheme_config_saves_and_loads(tmp_path):
    qat = _fit(quantization.quantize_model(_cnn(), quantize_scheme=Default8BitQuantizeScheme(disable_per_axis=True)))
    assert isinstance(qat.get_layer("quant_conv").quantize_config, OverriddenQuantizeConfig)
    qat.save(tmp_path / "qat.keras")
    loaded = keras.saving.load_model(tmp_path / "qat.keras")
    assert loaded.get_layer("quant_conv").quantize_config == qat.get_layer("quant_conv").quantize_config
    x, _ = _data()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))


class _DenseOnlyRegistry(quantization.QuantizeRegistry):
    def supports(self, layer):
        return True

    def get_quantize_config(self, layer):
        if isinstance(layer, keras.layers.Dense):
            return quantization.Default8BitQuantizeConfig(["kernel"], [], True)
        return None


class _DenseOnly(quantization.QuantizeScheme):
    def get_quantize_registry(self):
        return _DenseOnlyRegistry()


def test_a_scheme_of_ones_own_decides_each_layers_config():
    qat = quantization.quantize_model(_cnn(), quantize_scheme=_DenseOnly())
    kinds = [type(layer).__name__ for layer in qat.layers]
    assert kinds == ["QuantizeLayer", "Conv2D", "DepthwiseConv2D", "Flatten", "QuantizeWrapper"]
    assert _DenseOnly().get_layout_transformer() is None
    with pytest.raises(TypeError):
        quantization.QuantizeScheme()  # abstract, as tfmot's


def test_the_default_registry_refuses_what_tflite_cannot_run():
    registry = Default8BitQuantizeRegistry()
    assert not registry.supports(keras.layers.LSTM(2))
    with pytest.raises(KeyError):
        registry.get_quantize_config(keras.layers.LSTM(2))


def _examples():
    from kopt.quantization import default_8bit

    objects = [default_8bit, *(getattr(default_8bit, n) for n in default_8bit.__all__), OverriddenQuantizeConfig]
    return [(getattr(o, "__name__", str(o)), block) for o in objects
            for block in re.findall(r"```python\n(.*?)```", inspect.getdoc(o) or "", re.S)]


@pytest.mark.parametrize("name, code", _examples(), ids=[n for n, _ in _examples()])
def test_docstring_examples_run(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    x, y = np.random.rand(16, 8).astype("float32"), np.random.rand(16, 2).astype("float32")
    exec(compile(code, f"<example of {name}>", "exec"), {"np": np, "keras": keras, "kopt": kopt, "model": model,
                                                         "x": x, "y": y})
