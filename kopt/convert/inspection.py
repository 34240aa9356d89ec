"""`inspect`: what is inside a converted file, .tflite or ONNX, through the runtime module of its format."""

from kopt.convert import _litert, _onnx_info


def inspect(model_file):
    """Lists the ops, tensor types, quantization parameters, size and weight sparsity of a .tflite or ONNX file.

    ONNX files (an `ONNXModel`, a path ending in .onnx, or ONNX bytes) give an
    `ONNXInfo`; anything else is read as a .tflite file and gives a
    `TFLiteInfo`.

    Args:
        model_file: the file's bytes (e.g. what `to_tflite` or `to_onnx`
            returns) or a path to it.

    Returns:
        A `TFLiteInfo` or an `ONNXInfo` (print it for a summary; `to_dict()`
        for JSON).

    Example:

    ```python
    info = kopt.convert.inspect(kopt.convert.to_tflite(model, quantization=None, validate=False))
    print(info.op_counts)
    print(kopt.convert.inspect(kopt.convert.to_onnx(model, validate=False)).op_counts)
    ```
    """
    if _onnx_info.is_onnx(model_file):
        return _onnx_info.inspect_onnx(model_file)
    return _litert.inspect_tflite(model_file)
