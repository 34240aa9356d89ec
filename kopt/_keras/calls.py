"""Forwarding a wrapper's call to the wrapped layer."""

import inspect


def accepted_kwargs(layer, kwargs):
    """Keeps the keyword arguments that `layer.call` accepts (Keras may pass `mask`, `training`)."""
    parameters = inspect.signature(layer.call).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters}


def call_with_values(layer, substitutes, *args, **kwargs):
    """Calls `layer` with some of its variables read as other values, keeping its losses and state updates.

    This is how the wrappers run a layer on `weight * mask` or on fake-quantized weights without
    writing to the layer's variables inside the (possibly replicated) training step. The
    `keras.StatelessScope` that substitutes the values also collects what the layer adds with
    `add_loss` (including the activity-regularizer loss Keras adds in `Layer.__call__`); those losses
    are re-added to `layer` once the scope is closed, so they reach `model.losses` and the training
    loss as if the layer were not wrapped.

    Args:
        layer: the wrapped layer.
        substitutes: list of `(variable, value)`; inside the call, `variable` reads as `value`
            (gradients flow through `value`).
        *args, **kwargs: the call's arguments (keyword arguments `layer.call` does not take are dropped).

    Returns:
        The layer's outputs. State the layer wrote during the call (e.g. RNG seeds, statistics) is
        assigned to its variables afterwards.
    """
    import keras

    with keras.StatelessScope(state_mapping=substitutes, collect_losses=True) as scope:
        outputs = layer(*args, **accepted_kwargs(layer, kwargs))
    substituted = {id(variable) for variable, _ in substitutes}
    for variable in layer.variables:
        if id(variable) not in substituted:
            value = scope.get_current_value(variable)
            if value is not None:
                variable.assign(value)
    if scope.losses:
        # Outside the scope, add_loss records them on the layer (or in an enclosing collecting
        # scope), where `model.losses` finds them.
        layer.add_loss(list(scope.losses))
    return outputs


def wrapper_kwargs(layer, kwargs):
    """`kwargs` for a `keras.layers.Wrapper` around `layer`, carrying the layer's `input_shape=` argument.

    `keras.Sequential([Wrapper(Dense(4, input_shape=(8,)))])` builds from its first layer's declared input
    shape, which Keras keeps only in the private `_input_shape_arg`: the wrapper declares it too.
    """
    shape = getattr(layer, "_input_shape_arg", None)  # private: no public accessor in Keras 3
    if shape is not None and "input_shape" not in kwargs and "input_dim" not in kwargs:
        kwargs = {**kwargs, "input_shape": shape}
    return kwargs
