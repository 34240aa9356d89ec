"""Checks on a model's inputs that every technique shares."""


def reject_string_inputs(model, argument, action):
    """Raises a ValueError naming the string inputs of `model` (a preprocessor inside it), if it has any.

    Args:
        model: a built Keras model.
        argument: the argument's name, for the message (e.g. "to_quantize").
        action: what cannot be done, for the message (e.g. "quantize").
    """
    names = [str(t.name) for t in getattr(model, "inputs", None) or [] if "string" in str(t.dtype)]
    if names:
        raise ValueError(
            f"`{argument}` ('{model.name}') takes strings (inputs {names}): kopt cannot {action} a model with a "
            "text preprocessor inside it, since tokenizers have no integer or TFLite form here. Build the model "
            "without it (KerasHub: `preprocessor=None`), run the preprocessor outside, and pass the model the "
            "token ids and masks it makes.")
