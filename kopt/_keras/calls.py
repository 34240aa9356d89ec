"""Forwarding a wrapper's call to the wrapped layer."""

import inspect


def accepted_kwargs(layer, kwargs):
    """Keeps the keyword arguments that `layer.call` accepts (Keras may pass `mask`, `training`)."""
    parameters = inspect.signature(layer.call).parameters
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in parameters}
