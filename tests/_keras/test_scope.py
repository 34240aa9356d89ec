"""tfmot's loading scopes: kopt's classes under their plain names, extra classes, bad arguments."""

import keras
import pytest

import kopt


@pytest.mark.parametrize("scope, name", [(kopt.sparsity.prune_scope, "PruneLowMagnitude"),
                                         (kopt.quantization.quantize_scope, "QuantizeWrapper")])
def test_scope_resolves_plain_names_and_extras_and_rejects_non_dicts(scope, name):
    class Mine(keras.layers.Layer):
        pass

    with scope({"Mine": Mine}):
        assert keras.saving.get_registered_object(name) is not None
        assert keras.saving.get_registered_object("Mine") is Mine
    assert keras.saving.get_registered_object("Mine") is None
    with pytest.raises(ValueError, match=rf"{scope.__name__}\(\) takes dicts .* argument 0 is \[1\]"):
        scope([1])
