"""`prune_scope`: tfmot's context manager for loading pruned models."""

from kopt._keras.scope import custom_object_scope
from kopt.sparsity.schedules import ConstantSparsity, PolynomialDecay
from kopt.sparsity.wrapper import PruneLowMagnitude


def prune_scope(*args):
    """A scope in which pruned models load (tfmot's `prune_scope`).

    kopt's classes are registered with Keras, so `.keras` files of pruned
    models load without it; it is there so tfmot code runs unchanged, and to
    make your own classes (e.g. a `PrunableLayer` subclass or a custom
    `PruningSchedule`) available while loading. Inside it, kopt's classes also
    resolve by their plain names (e.g. "PruneLowMagnitude"), as tfmot's do.

    Args:
        *args: dicts `{name: class}` of extra objects to make available
            (tfmot's `prune_scope` takes none).

    Returns:
        A `keras.saving.custom_object_scope` to use in a `with` statement.

    Raises:
        ValueError: if an argument is not a dict.

    Example:

    ```python
    pruned.save("pruned.keras")
    with kopt.sparsity.prune_scope():
        loaded = keras.models.load_model("pruned.keras")
    ```
    """
    return custom_object_scope("prune_scope", (PruneLowMagnitude, ConstantSparsity, PolynomialDecay), args,
                               "prune_scope({'MyPrunableDense': MyPrunableDense})")
