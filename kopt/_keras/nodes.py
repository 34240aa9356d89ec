"""The call nodes of a Functional model, in order: which tensors each operation took and gave.

Keras 3 keeps a Functional graph as `Node` objects on each operation (`operation._inbound_nodes`) and each
tensor's producer in `tensor._keras_history`; neither has a public accessor, so they are read here, once.
"""

import keras


def producer(tensor):
    """The operation that computed a symbolic tensor of a Functional graph, or None."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def graph_calls(model):
    """Like `graph_nodes`, with each call's arguments: `[(operation, inputs, outputs, (args, kwargs))]`."""
    operations = model.operations
    known = {id(op) for op in operations}
    result = []
    for op in operations:
        for node in op._inbound_nodes:  # private: the calls of `op` (no public accessor)
            arguments = (node.arguments.args, node.arguments.kwargs)
            inputs = [t for t in keras.tree.flatten(arguments) if isinstance(t, keras.KerasTensor)]
            if all(id(producer(t)) in known for t in inputs):
                result.append((op, inputs, list(node.output_tensors), arguments))
    return result


def graph_nodes(model):
    """`[(operation, inputs, outputs)]` for every call in a Functional `model`, in topological order.

    Args:
        model: a Functional model (use `keras.Model(inputs, outputs)` for a Sequential one).

    Returns:
        A list of triples: the layer or plain operation, the list of symbolic tensors it took (positional and
        keyword arguments, flattened) and the list it gave. Calls of a shared layer in other models are left out.
    """
    return [(op, inputs, outputs) for op, inputs, outputs, _ in graph_calls(model)]
