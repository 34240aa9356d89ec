"""kopt's error types: the type, not the message, tells a caller what went wrong.

Both are `ValueError`s, so code that caught `ValueError` before keeps working. Bad arguments and bad data
stay plain `ValueError`s (or `TypeError`s), named after the argument.

- `ConversionError`: the converter (TFLite's, or tf2onnx) cannot turn the model into the file asked for, or
  leaves ops that break the request (float ops in a full-int8 file, ops ONNX does not have). `.ops` and
  `.layers` name them. Retrying with other data does not help; changing the model or the mode does.
- `ValidationError`: the file was made, but it does not compute what the Keras model computes closely enough.
  `.report` is the `kopt.convert.ValidationReport`; nothing was written.

Example:

```python
try:
    kopt.convert.to_tflite(model, representative_data=np.random.rand(64, 8).astype("float32"),
                           min_sqnr_db=200.0)
except kopt.errors.ValidationError as error:
    print(error.report.sqnr_db, error.report.failed_outputs)
```
"""


class KoptError(Exception):
    """Base class of the errors kopt raises about a model (not about its arguments)."""


class ConversionError(KoptError, ValueError):
    """The model cannot be converted as asked.

    Args:
        message: what failed and how to fix it.
        ops: the op types at fault (TFLite or ONNX op names), if known.
        layers: the names of the Keras layers they come from, if known.
    """

    def __init__(self, message, *, ops=(), layers=()):
        super().__init__(message)
        self.ops = list(ops)
        self.layers = list(layers)


class ValidationError(KoptError, ValueError):
    """The converted file does not match its Keras model: nothing was written.

    Args:
        message: the verdict, with the report.
        report: the `kopt.convert.ValidationReport` (figures per output and the thresholds).
    """

    def __init__(self, message, *, report):
        super().__init__(message)
        self.report = report


__all__ = ["ConversionError", "KoptError", "ValidationError"]
