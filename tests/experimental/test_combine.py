"""kopt.experimental.combine: PQAT, CQAT and PCQAT keep zeros and clusters through QAT into the int8 file."""

import inspect
import re

import keras
import numpy as np
import pytest

import kopt
from kopt import convert, quantization
from kopt.experimental import combine
from kopt.experimental.combine.cluster_preserve_quantizer import (
    ClusterPreserveQuantizeConfig, ClusterPreserveQuantizer, find_centroids)
from kopt.quantization.default_8bit import Default8BitQuantizeScheme
from tests.oracle.tfmot_scheme_oracle import run_scheme_oracle
from tests.quantization.int8_weights import distinct_per_channel, int8_weights

LEVELS = 8


def _cnn(channels=3):
    return keras.Sequential([
        keras.Input((8, 8, channels)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.Flatten(),
        keras.layers.Dense(3, name="dense"),
    ])


def _data(n=64, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, channels)).astype("float32"), np.arange(n) % 3


def _clustered(values, levels=LEVELS):
    """Each value replaced by the nearest of `levels` evenly spaced values over the tensor's range."""
    grid = np.linspace(values.min(), values.max(), levels).astype(values.dtype)
    return grid[np.abs(values[..., None] - grid).argmin(-1)]


def _model(kind):
    """A CNN whose kernels are zero where small ("pruned"), have 8 values ("clustered"), or both."""
    keras.utils.set_random_seed(0)
    model = _cnn()
    for layer in (model.get_layer("conv"), model.get_layer("dense")):
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        if "clustered" in kind:
            kernel = _clustered(kernel)
        if "pruned" in kind:
            kernel = np.where(np.abs(kernel) < np.quantile(np.abs(kernel), 0.5), 0.0, kernel).astype("float32")
        layer.kernel.assign(kernel)
    return model


def _fit(model, scheme, epochs=2, learning_rate=1e-2):
    x, y = _data()
    qat = quantization.quantize_model(model, quantize_scheme=scheme)
    qat.compile(keras.optimizers.Adam(learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False)
    return qat


def _file_kernels(content):
    """{"conv": (values in Keras layout, per-channel counts), "dense": ...} from the .tflite file."""
    found = {}
    for name, values, axis, scales in int8_weights(content):
        if values.ndim == 4:  # CONV_2D filter [out, h, w, in]
            found["conv"] = (np.transpose(values, (1, 2, 3, 0)), distinct_per_channel(values, axis, scales))
        elif values.ndim == 2:  # FULLY_CONNECTED weights [out, in]
            found["dense"] = (values.T, distinct_per_channel(values, axis, scales))
    assert set(found) == {"conv", "dense"}, [n for n, *_ in int8_weights(content)]
    return found


def _kernel(model, name):
    return keras.ops.convert_to_numpy(model.get_layer(name).kernel)


def test_pqat_keeps_the_zeros_into_the_int8_file_and_plain_qat_does_not():
    model = _model("pruned")
    zeros = {name: _kernel(model, name) == 0 for name in ("conv", "dense")}
    assert all(0.45 < z.mean() < 0.55 for z in zeros.values())
    x, _ = _data()
    kept = _file_kernels(convert.to_tflite(_fit(model, combine.Default8BitPrunePreserveQuantizeScheme()),
                                           validation_data=x))
    plain = _file_kernels(convert.to_tflite(_fit(model, None), validation_data=x))
    for name, zero in zeros.items():
        assert np.all(kept[name][0][zero] == 0), name  # every pruned weight is an int8 zero
        assert np.mean(plain[name][0][zero] == 0) < 0.5, name  # plain QAT (tfmot's default) moved most of them


def test_cqat_keeps_at_most_the_clusters_into_the_int8_file_and_plain_qat_does_not():
    model = _model("clustered")
    scheme = combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)
    qat = _fit(model, scheme)
    conv = qat.get_layer("quant_conv")
    assert isinstance(conv.quantize_config, ClusterPreserveQuantizeConfig)
    # As tfmot: the layers' kernels hold the clustered values after training (at most 8 per tensor / channel).
    assert max(_distinct(_kernel_of(qat, "conv"), "conv")) <= LEVELS
    assert len(np.unique(_kernel_of(qat, "dense"))) <= LEVELS
    final = combine.strip_clustering_cqat(qat)
    x, _ = _data()
    clustered = _file_kernels(convert.to_tflite(final, validation_data=x))
    unstripped = convert.to_tflite(qat, validation_data=x)  # the CQAT model converts to the same kernels
    assert "ONE_HOT" not in convert.inspect(unstripped).op_counts
    for name in ("conv", "dense"):
        np.testing.assert_array_equal(_file_kernels(unstripped)[name][0], clustered[name][0])
    plain = _file_kernels(convert.to_tflite(_fit(model, None), validation_data=x))
    for name in ("conv", "dense"):
        assert max(clustered[name][1]) <= LEVELS, (name, clustered[name][1])
        assert max(plain[name][1]) > 2 * LEVELS, (name, plain[name][1])
    # The stripped kernels hold the clustered values: at most 8 per tensor (the dense) or channel (the conv).
    assert len(np.unique(_kernel_of(final, "dense"))) <= LEVELS
    assert max(len(np.unique(_kernel_of(final, "conv")[..., c])) for c in range(8)) <= LEVELS


def _distinct(kernel, name):
    """Distinct values per output channel (a per-channel conv kernel) or of the tensor (the dense kernel)."""
    if name == "conv":
        return [len(np.unique(kernel[..., c])) for c in range(kernel.shape[-1])]
    return [len(np.unique(kernel))]


def _kernel_of(qat, name):
    return keras.ops.convert_to_numpy(qat.get_layer(f"quant_{name}").layer.kernel)


def test_pcqat_keeps_the_zeros_and_the_clusters():
    model = _model("clustered pruned")
    zeros = {name: _kernel(model, name) == 0 for name in ("conv", "dense")}
    counts = {name: max(_distinct(_kernel(model, name), name)) for name in ("conv", "dense")}
    final = combine.strip_clustering_cqat(_fit(model, combine.Default8BitClusterPreserveQuantizeScheme()))
    x, _ = _data()
    in_file = _file_kernels(convert.to_tflite(final, validation_data=x))
    for name, zero in zeros.items():
        assert np.all(in_file[name][0][zero] == 0), name
        assert max(_distinct(_kernel_of(final, name), name)) <= counts[name]  # per channel for the conv
        assert max(in_file[name][1]) <= counts[name]
    # Without preserve_sparsity (CQAT) the zero centroid trains like the others: the zeros go.
    cqat = combine.strip_clustering_cqat(
        _fit(model, combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)))
    assert not np.all(_kernel_of(cqat, "dense")[zeros["dense"]] == 0)


def test_strip_clustering_cqat_keeps_the_outputs_and_drops_the_clustering_weights(tmp_path):
    qat = _fit(_model("clustered"), combine.Default8BitClusterPreserveQuantizeScheme(), epochs=1)
    names = [w.name for w in qat.get_layer("quant_dense").weights]
    assert {"kernel_cluster_centroids", "kernel_original_weights", "kernel_pulling_indices"} <= set(names)
    x, _ = _data()
    qat.save(tmp_path / "cqat.keras")
    loaded = keras.saving.load_model(tmp_path / "cqat.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    final = combine.strip_clustering_cqat(loaded)
    stripped_names = [w.name for w in final.get_layer("quant_dense").weights]
    assert not any("cluster" in n or "pulling" in n or "original" in n for n in stripped_names)
    assert isinstance(final.get_layer("quant_dense").quantize_config, quantization.Default8BitQuantizeConfig)
    np.testing.assert_array_equal(final.predict(x, verbose=0), qat.predict(x, verbose=0))
    with pytest.raises(ValueError, match="to_strip"):
        combine.strip_clustering_cqat("model")


def test_centroids_are_the_unique_values_per_channel_when_the_channels_allow_it():
    kernel = np.zeros((2, 2, 1, 3), "float32")
    kernel[..., 0] = [[[1], [2]], [[1], [2]]]
    kernel[..., 1] = [[[3], [4]], [[5], [3]]]
    kernel[..., 2] = [[[6], [7]], [[6], [6]]]
    centroids, axis = find_centroids(kernel, -1)
    assert axis == 3 and centroids.shape == (3, 3)
    np.testing.assert_array_equal(centroids[0], [1, 2, 2])  # padded with its last value, which no weight selects
    kernel[..., 0] = 1.0  # 1 value against 3: more than one apart -> per tensor, as tfmot
    centroids, axis = find_centroids(kernel, -1)
    assert axis is None and list(centroids) == [1, 3, 4, 5, 6, 7]


def test_unclustered_and_constant_kernels_are_quantized_as_usual():
    model = _cnn()
    model.build((None, 8, 8, 3))  # random kernels: conv has 27 distinct values per channel (<= 1024) ...
    dense = model.get_layer("dense")
    dense.kernel.assign(np.ones(dense.kernel.shape, "float32"))  # ... dense one value: no clusters (tfmot: <= 1)
    registry = combine.Default8BitClusterPreserveQuantizeScheme().get_quantize_registry()
    assert not isinstance(registry.get_quantize_config(dense), ClusterPreserveQuantizeConfig)
    big = keras.layers.Dense(2048)
    big.build((None, 2))  # 4096 distinct values: more than tfmot's 1024
    assert not isinstance(registry.get_quantize_config(big), ClusterPreserveQuantizeConfig)


def test_the_quantizer_computes_with_its_centroids():
    quantizer = ClusterPreserveQuantizer(8, False, True, True, num_clusters=2)
    state = quantizer.build(keras.layers.Layer(), (3, 2), "kernel")  # an unbuilt layer holds the state
    values = np.array([[-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]], "float32")
    quantizer.assign_range(values, state)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(state["centroids"]), [-0.5, 0.5])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(state["original_weights"]), values)
    # The optimizer moves the trained copy; the last weight crosses over to the other centroid.
    state["original_weights"].assign(values + np.array([[0.1, -0.1], [0.2, 0.0], [-0.9, 0.0]], "float32"))
    clustered = [[-0.5, 0.5], [0.5, -0.5], [-0.5, 0.5]]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(quantizer(values, True, state)), clustered, atol=1 / 127)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(quantizer.training_weight(state)), clustered)
    kernel = np.full((3, 2), 0.25, "float32")  # in inference the kernel is used as it is (tfmot)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(quantizer(kernel, False, state)), kernel, atol=1 / 127)
    with pytest.raises(ValueError, match="num_clusters"):
        ClusterPreserveQuantizer(8, False, True, True, num_clusters=0)


def _oracle_inputs(tmp_path, model):
    x, y = _data(channels=1)
    src = tmp_path / "in.npz"
    np.savez(src, conv_kernel=_kernel(model, "conv"), conv_bias=np.zeros(8, "float32"),
             dense_kernel=_kernel(model, "dense"), dense_bias=np.zeros(3, "float32"), x=x, y=y, epochs=2,
             learning_rate=1e-3)
    return src, x, y


def _oracle_model(kind):
    keras.utils.set_random_seed(1)
    model = _cnn(channels=1)
    for name in ("conv", "dense"):
        kernel = _kernel(model, name)
        if "clustered" in kind:
            kernel = _clustered(kernel)
        if "pruned" in kind:
            kernel = np.where(np.abs(kernel) < np.quantile(np.abs(kernel), 0.5), 0.0, kernel).astype("float32")
        model.get_layer(name).kernel.assign(kernel)
    return model


def _kopt_after(model, scheme, x, y):
    qat = quantization.quantize_model(model, quantize_scheme=scheme)
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    if "Cluster" in type(scheme).__name__:
        qat = combine.strip_clustering_cqat(qat)
    return {name: _kernel_of(qat, name) for name in ("conv", "dense")}


@pytest.mark.slow  # three tfmot processes (~10 s each)
def test_the_schemes_match_tfmot(tmp_path):
    """Same weights, data and fit in tfmot (tf_keras) and kopt: the same zeros and the same numbers of values."""
    pruned = _oracle_model("pruned")
    src, x, y = _oracle_inputs(tmp_path, pruned)
    original = {name: _kernel(pruned, name) for name in ("conv", "dense")}
    for tfmot_name, scheme in (("prune_preserve", combine.Default8BitPrunePreserveQuantizeScheme()),
                               ("default", Default8BitQuantizeScheme())):
        theirs = run_scheme_oracle(tfmot_name, src, tmp_path / f"{tfmot_name}.npz")
        ours = _kopt_after(pruned, scheme, x, y)
        for name in ("conv", "dense"):
            np.testing.assert_array_equal(ours[name] == 0, theirs[f"{name}_kernel"] == 0, err_msg=tfmot_name)
            if tfmot_name == "prune_preserve":
                np.testing.assert_array_equal(ours[name] == 0, original[name] == 0)

    clustered = _oracle_model("clustered")
    src, x, y = _oracle_inputs(tmp_path, clustered)
    theirs = run_scheme_oracle("cluster_preserve", src, tmp_path / "cluster_preserve.npz")
    ours = _kopt_after(clustered, combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False), x, y)
    for name in ("conv", "dense"):
        before = _kernel(clustered, name)
        counts = [len(np.unique(k[..., c])) for k in (before, ours[name], theirs[f"{name}_kernel"])
                  for c in range(k.shape[-1])]
        channels = before.shape[-1]
        assert counts[channels:2 * channels] == counts[2 * channels:], name  # kopt's per channel == tfmot's
        assert len(np.unique(ours[name])) == len(np.unique(theirs[f"{name}_kernel"])), name


def _examples():
    import kopt.experimental.combine.cluster_preserve as cluster_preserve
    import kopt.experimental.combine.cluster_preserve_quantizer as quantizer_module

    objects = [kopt.experimental, combine, *(getattr(combine, n) for n in combine.__all__),
               cluster_preserve.Default8BitClusterPreserveQuantizeRegistry, quantizer_module.ClusterPreserveQuantizer,
               quantizer_module.ClusterPreserveQuantizeConfig]
    return [(getattr(o, "__name__", str(o)), block) for o in objects
            for block in re.findall(r"```python\n(.*?)```", inspect.getdoc(o) or "", re.S)]


@pytest.mark.parametrize("name, code", _examples(), ids=[n for n, _ in _examples()])
def test_docstring_examples_run(name, code, tmp_path, monkeypatch):
    from kopt import sparsity

    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dense(2)])
    pruned = sparsity.prune_low_magnitude(model, pruning_schedule=sparsity.ConstantSparsity(0.8, 0, frequency=1))
    pruned.compile("adam", "mse")
    x, y = np.random.rand(16, 8).astype("float32"), np.random.rand(16, 2).astype("float32")
    pruned.fit(x, y, verbose=0, callbacks=[sparsity.UpdatePruningStep()])
    exec(compile(code, f"<example of {name}>", "exec"),
         {"np": np, "keras": keras, "kopt": kopt, "model": model, "pruned": pruned, "x": x, "y": y})


def test_every_public_name_has_an_example():
    documented = {name for name, _ in _examples()}
    assert {"kopt.experimental", "kopt.experimental.combine", *combine.__all__} <= documented
