"""`PrunableLayer`: how a custom layer tells kopt which weights to prune."""

import abc


class PrunableLayer(abc.ABC):
    """Mixin for custom layers that can be pruned by `prune_low_magnitude`.

    Implement `get_prunable_weights()` to return the weight variables to prune
    (usually the kernels, not the biases). Any layer with a
    `get_prunable_weights` method is accepted too, as in tfmot.

    Example:

    ```python
    class MyDense(keras.layers.Dense, kopt.sparsity.PrunableLayer):
        def get_prunable_weights(self):
            return [self.kernel]

    layer = kopt.sparsity.prune_low_magnitude(MyDense(4))
    ```
    """

    @abc.abstractmethod
    def get_prunable_weights(self):
        """Returns the list of variables to prune."""
        raise NotImplementedError("PrunableLayer subclasses must implement get_prunable_weights().")
