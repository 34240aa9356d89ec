"""PQAT: quantization-aware training that keeps a pruned model's zeros (tfmot's prune-preserve scheme)."""

from kopt.quantization.default_8bit import Default8BitQuantizeScheme


class Default8BitPrunePreserveQuantizeScheme(Default8BitQuantizeScheme):
    """The default 8-bit scheme, keeping zero weights at zero (tfmot's `Default8BitPrunePreserveQuantizeScheme`).

    Each quantized weight that has zeros when `quantize_apply` runs gets a 0/1
    mask: the zeros stay exactly zero through training, so a stripped pruned
    model stays as sparse in the int8 file. Weights without zeros get no mask
    (and no extra work per step).

    Args:
        disable_per_axis: (kopt; tfmot's takes no argument) quantize
            Conv2D/DepthwiseConv2D kernels per tensor.

    Example:

    ```python
    stripped = kopt.sparsity.strip_pruning(pruned)
    zeros = keras.ops.convert_to_numpy(stripped.layers[0].kernel) == 0
    qat = kopt.quantization.quantize_model(
        stripped, quantize_scheme=kopt.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    qat.compile("adam", "mse")
    qat.fit(x, y, epochs=1, verbose=0)
    assert np.array_equal(keras.ops.convert_to_numpy(qat.layers[1].layer.kernel) == 0, zeros)
    ```
    """

    preserve_sparsity = True
