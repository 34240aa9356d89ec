"""A copy of a `QuantizeWrapper` with another `QuantizeConfig` (or layer), keeping its trained state."""

import keras

from kopt._keras.clone import build_layer, copy_layer
from kopt.quantization.wrapper import QuantizeWrapper


def rewrapped(wrapper, quantize_config, layer=None, keep=lambda name: True):
    """A new built `QuantizeWrapper` around a copy of `wrapper.layer` (or `layer`) with `quantize_config`.

    The wrapper's own weights (ranges, masks) are copied by name from `wrapper` where the new wrapper has a
    weight of that name and shape and `keep(name)` is true; the others keep their initial values.
    """
    layer = copy_layer(wrapper.layer) if layer is None else layer
    new = QuantizeWrapper(layer, quantize_config, quantize_output=wrapper.quantize_output,
                          preserve_sparsity=wrapper.preserve_sparsity, name=wrapper.name)
    build_config = wrapper.get_build_config() or {}
    build_layer(new, build_config.get("input_shape"))
    inner = {id(v) for v in layer.weights}
    old = {v.name: v for v in wrapper.weights if not any(v is w for w in wrapper.layer.weights)}
    for variable in new.weights:
        if id(variable) in inner or not keep(variable.name):
            continue
        source = old.get(variable.name)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            variable.assign(keras.ops.convert_to_numpy(source))
    return new
