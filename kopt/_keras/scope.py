"""The custom-object scope behind `prune_scope` and `quantize_scope` (tfmot's loading scopes)."""

import keras


def custom_object_scope(scope_name, classes, extras, example):
    """A `keras.saving.custom_object_scope` with `classes` under their plain names plus the `extras` dicts.

    Args:
        scope_name: the public function's name, for error messages.
        classes: the technique's classes.
        extras: the user's dicts `{name: class}`.
        example: a call to show in the error, e.g. "prune_scope({'MyLayer': MyLayer})".

    Raises:
        ValueError: if an extra is not a dict.
    """
    for i, extra in enumerate(extras):
        if not isinstance(extra, dict):
            raise ValueError(f"{scope_name}() takes dicts {{name: class}}; argument {i} is {extra!r}. "
                             f"Pass e.g. {example}.")
    objects = {cls.__name__: cls for cls in classes}
    for extra in extras:
        objects.update(extra)
    return keras.saving.custom_object_scope(objects)
