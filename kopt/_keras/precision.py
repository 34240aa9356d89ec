"""A float32 copy of a model trained under a mixed precision policy, for export."""

import keras


def _float32_policies(config):
    """`config` with every mixed/16-bit `DTypePolicy` replaced by float32; and whether any was."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            name = config["config"].get("name", "float32")
            if name != "float32":
                return {**config, "config": {**config["config"], "name": "float32"}}, True
            return config, False
        changed = False
        out = {}
        for key, value in config.items():
            out[key], one = _float32_policies(value)
            changed |= one
        return out, changed
    if isinstance(config, list):
        items = [_float32_policies(v) for v in config]
        return [v for v, _ in items], any(c for _, c in items)
    return config, False


def as_float32(model):
    """`model` itself if every layer computes in float32, else a float32 copy with the same weights.

    Layers trained under "mixed_bfloat16"/"mixed_float16" keep float32 variables, so the copy holds exactly the
    trained values; only the compute dtype changes (TFLite's converter rejects bfloat16 graphs).
    """
    serialized = keras.saving.serialize_keras_object(model)
    converted, changed = _float32_policies(serialized)
    if not changed:
        return model
    copy = keras.saving.deserialize_keras_object(converted)
    copy.set_weights(model.get_weights())
    return copy
