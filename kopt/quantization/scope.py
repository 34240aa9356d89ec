"""`quantize_scope`: tfmot's context manager for loading quantized models."""

from kopt._keras.scope import custom_object_scope

from kopt.quantization.layers import QuantizeAnnotate, QuantizeLayer
from kopt.quantization.quantize_config import Default8BitQuantizeConfig
from kopt.quantization._registry import SublayerQuantizeConfig
from kopt.quantization._overrides import OverriddenQuantizeConfig
from kopt.quantization.fix_range import FixedQuantizeConfig
from kopt.quantization.quantizers import (
    ActivationQuantizer,
    AllValuesQuantizer,
    FixedQuantizer,
    NoQuantizer,
    LastValueQuantizer,
    MovingAverageQuantizer,
    WeightQuantizer,
)
from kopt.quantization.wrapper import QuantizeWrapper


def _cluster_classes():
    # Imported here: kopt.experimental.combine builds on kopt.quantization.
    from kopt.experimental.combine.cluster_preserve_quantizer import (
        ClusterPreserveQuantizeConfig, ClusterPreserveQuantizer)

    return ClusterPreserveQuantizeConfig, ClusterPreserveQuantizer


def quantize_scope(*args):
    """A scope in which quantized models load (tfmot's `quantize_scope`).

    kopt's classes are registered with Keras, so `.keras` files of QAT models
    load without it; it is there so tfmot code runs unchanged, and to make your
    own `QuantizeConfig`, `Quantizer` or layer classes available while loading
    (or in `quantize_apply`). Inside it, kopt's classes also resolve by their
    plain names (e.g. "QuantizeWrapper"), as tfmot's do.

    Args:
        *args: dicts `{name: class}` of extra objects to make available.

    Returns:
        A `keras.saving.custom_object_scope` to use in a `with` statement.

    Raises:
        ValueError: if an argument is not a dict.

    Example:

    ```python
    qat = kopt.quantization.quantize_model(model)
    qat.save("qat.keras")

    class MyConfig(kopt.quantization.Default8BitQuantizeConfig):
        pass

    with kopt.quantization.quantize_scope({"MyConfig": MyConfig}):
        loaded = keras.models.load_model("qat.keras")
    ```
    """
    return custom_object_scope(
        "quantize_scope",
        (QuantizeAnnotate, QuantizeLayer, QuantizeWrapper, Default8BitQuantizeConfig, SublayerQuantizeConfig,
         LastValueQuantizer, MovingAverageQuantizer, AllValuesQuantizer, WeightQuantizer, ActivationQuantizer,
         FixedQuantizer, NoQuantizer, OverriddenQuantizeConfig, FixedQuantizeConfig, *_cluster_classes()),
        args, "quantize_scope({'MyQuantizeConfig': MyQuantizeConfig})")
