"""`set_mixed_precision`: Keras's global dtype policy for the hardware, with kopt's state kept float32."""

import logging

logger = logging.getLogger("kopt")

POLICIES = ("auto", "mixed_bfloat16", "mixed_float16", "float32", "bfloat16", "float16")


def _hardware():
    import tensorflow as tf

    if tf.config.list_logical_devices("TPU"):
        return "TPU"
    if tf.config.list_logical_devices("GPU"):
        return "GPU"
    return "CPU"


def set_mixed_precision(policy="auto"):
    """Sets Keras's global dtype policy (`keras.config.set_dtype_policy`), by hardware with "auto".

    "auto" is "mixed_bfloat16" on a TPU, "mixed_float16" on a GPU and "float32"
    on a CPU (where 16-bit compute is slower). Under a mixed policy layers
    compute in 16 bits and keep float32 variables; kopt's own state (pruning
    masks and thresholds, QAT ranges and fake quantization, distillation losses)
    stays float32, and `kopt.convert.to_tflite` exports float32. Call it before
    building the model.

    Args:
        policy: "auto", "mixed_bfloat16", "mixed_float16" or "float32" (or any
            policy name Keras accepts).

    Returns:
        The policy name that was set.

    Raises:
        ValueError: an unknown policy; float16 on a TPU (TPUs compute in
            bfloat16: use "mixed_bfloat16").

    Example:

    ```python
    policy = kopt.distribute.set_mixed_precision("auto")  # "float32" on a CPU
    kopt.distribute.set_mixed_precision("float32")
    ```
    """
    import keras

    hardware = _hardware()
    if policy == "auto":
        policy = {"TPU": "mixed_bfloat16", "GPU": "mixed_float16", "CPU": "float32"}[hardware]
    if not isinstance(policy, str):
        raise ValueError(f"`policy` must be one of {list(POLICIES)}, got {policy!r}.")
    if hardware == "TPU" and "float16" in policy and "bfloat16" not in policy:
        raise ValueError(f"`policy={policy!r}` on a TPU: TPUs compute in bfloat16, not float16. Use "
                         "'mixed_bfloat16' (or 'auto').")
    try:
        keras.config.set_dtype_policy(policy)
    except ValueError:
        raise ValueError(f"`policy` must be one of {list(POLICIES)}, got {policy!r}.") from None
    logger.info("kopt.distribute: dtype policy %s (%s)", policy, hardware)
    return policy
