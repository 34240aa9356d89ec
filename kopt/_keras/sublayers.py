"""The layers a custom layer holds as attributes, and rebuilding layers whose config does not round-trip.

Keras 3 tracks every layer assigned to an attribute of a layer (KerasHub's `TransformerEncoder` holds its
attention, Dense and LayerNormalization layers that way), but exposes them publicly only on models
(`Model.layers`). `Layer._flatten_layers` is what Keras itself uses to collect a layer's weights from its
sublayers; it is read here, once.
"""

import inspect

import keras

# Keyword arguments every Keras layer takes (keras.layers.Layer.__init__ and the **kwargs it accepts).
_LAYER_KWARGS = {"name", "trainable", "dtype", "autocast", "activity_regularizer", "input_shape", "input_dim",
                 "batch_input_shape", "batch_size", "weights", "dynamic"}


def sublayers(layer):
    """The layers `layer` tracks as attributes, one level down (a model's are its `layers`)."""
    return list(layer._flatten_layers(include_self=False, recursive=False))  # private: no public accessor


def all_sublayers(layer):
    """`layer` and every layer it tracks, at any depth (each once)."""
    return list(layer._flatten_layers(include_self=True, recursive=True))  # private: no public accessor


def relative_path(layer, variable):
    """`variable`'s path below `layer` ('kernel', 'self_attention_layer/query/kernel'), else its name."""
    parts = variable.path.split("/")
    if layer.name in parts[:-1]:
        return "/".join(parts[parts.index(layer.name) + 1:])
    return variable.name


def is_keras_layer(layer):
    """Whether `layer`'s class is one of Keras's own (as opposed to a custom or KerasHub layer)."""
    return type(layer).__module__.split(".")[0] == "keras"


def _constructor_arguments(cls):
    """The keyword names `cls(...)` accepts, gathered over its Keras class hierarchy; None if any takes anything."""
    names = set(_LAYER_KWARGS)
    for klass in cls.__mro__:
        if klass is keras.layers.Layer or not issubclass(klass, keras.layers.Layer):
            break
        if "__init__" not in vars(klass):
            continue
        names.update(p.name for p in inspect.signature(klass.__init__).parameters.values()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return names


def layer_from_config(cls, config, custom_objects=None):
    """`cls.from_config(config)`, retried without the keys no constructor in `cls`'s hierarchy takes.

    Some layers write more into `get_config` than their constructor accepts (KerasHub 0.32's
    `ViTPatchingAndEmbedding` adds `num_patches` and `num_positions`, which it computes), so
    `from_config(get_config())` raises a TypeError. The extra keys are derived values: dropped, the layer is
    rebuilt from its real arguments.

    Args:
        cls: the layer class.
        config: the layer's config dict.
        custom_objects: passed to `from_config` where it takes them.

    Returns:
        The new (unbuilt) layer.
    """
    def build(conf):
        if custom_objects is not None and "custom_objects" in inspect.signature(cls.from_config).parameters:
            return cls.from_config(conf, custom_objects=custom_objects)
        return cls.from_config(conf)

    try:
        return build(config)
    except TypeError as error:
        accepted = _constructor_arguments(cls)
        trimmed = {k: v for k, v in config.items() if k in accepted}
        if trimmed == config:
            raise
        try:
            return build(trimmed)
        except Exception:
            raise error from None


def deserialize_layer(serialized, custom_objects=None):
    """`keras.saving.deserialize_keras_object` for a layer, retried with `layer_from_config` if its config does not
    round-trip (see there). Used by kopt's wrappers to load the layer they wrap."""
    try:
        return keras.saving.deserialize_keras_object(serialized, custom_objects=custom_objects)
    except TypeError:
        if not isinstance(serialized, dict) or "config" not in serialized:
            raise
        cls = _resolve_class(serialized, custom_objects)
        if cls is None:
            raise
        layer = layer_from_config(cls, serialized["config"], custom_objects)
        if serialized.get("build_config"):
            layer.build_from_config(serialized["build_config"])
        return layer


def _resolve_class(serialized, custom_objects):
    registered = serialized.get("registered_name") or serialized.get("class_name")
    cls = (custom_objects or {}).get(registered) or keras.saving.get_registered_object(registered)
    if cls is None and serialized.get("module"):
        import importlib

        try:
            cls = getattr(importlib.import_module(serialized["module"]), serialized["class_name"], None)
        except ImportError:
            cls = None
    return cls if isinstance(cls, type) and issubclass(cls, keras.layers.Layer) else None
