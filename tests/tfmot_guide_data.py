"""What tfmot's example guides download, made from data that ships with scikit-learn, and LiteRT look-ups.

The guides load MNIST (`keras.datasets.mnist.load_data()`) or CIFAR-10 (`tfds.load('cifar10', ...)`), which are
downloads. These stand-ins return scikit-learn's 1797 real 8x8 handwritten digits (split as
`kopt.datasets.load_digits` splits them: 1347 train, 450 test) in the same shapes and dtypes, so that the guides'
code after the load runs unchanged:

- `load_mnist_like()`: 28x28 uint8 images 0-255 (the 8x8 digit upscaled to the central 20x20, as MNIST's digits
  sit in a 20x20 box), uint8 labels: `((train_images, train_labels), (test_images, test_labels))`.
- `tfds.load('cifar10', split=[...], as_supervised=True, with_info=True)`: 32x32x3 uint8 images (the digit in the
  central 24x24, grey on all three channels) as `tf.data` datasets of `(image, label)`, with tfds' `train[:90%]`
  style splits and an info object holding `splits['train'].num_examples`.
"""

import functools
import re
import types

import numpy as np
import tensorflow as tf


@functools.lru_cache(maxsize=None)
def _digits_cached(size, pad):
    from kopt.datasets import load_digits

    (x_train, y_train), (x_test, y_test) = load_digits()

    def upscale(x):
        x = tf.image.resize(x * 255.0, (size, size), method="bilinear").numpy()
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        return np.clip(np.round(x), 0, 255).astype(np.uint8)

    return (upscale(x_train), y_train.astype(np.uint8)), (upscale(x_test), y_test.astype(np.uint8))


def _digits(size, pad):
    (x_train, y_train), (x_test, y_test) = _digits_cached(size, pad)
    return (x_train.copy(), y_train.copy()), (x_test.copy(), y_test.copy())  # callers may change theirs


def load_mnist_like():
    """Digits shaped like `keras.datasets.mnist.load_data()`: images (n, 28, 28) uint8 0-255, labels uint8."""
    (x_train, y_train), (x_test, y_test) = _digits(20, 4)
    return (x_train[..., 0], y_train), (x_test[..., 0], y_test)


def _split(x, y, spec):
    """tfds' split strings on our arrays: 'train', 'test', 'train[:90%]', 'train[90%:]'."""
    match = re.fullmatch(r"(\w+)(?:\[(\d*)%?:(\d*)%?\])?", spec)
    name, start, stop = match.groups()
    arrays = x[name], y[name]
    if match.group(2) is not None or match.group(3) is not None:
        n = len(arrays[0])
        lo = int(start) * n // 100 if start else 0
        hi = int(stop) * n // 100 if stop else n
        arrays = tuple(a[lo:hi] for a in arrays)
    return tf.data.Dataset.from_tensor_slices((arrays[0], arrays[1].astype(np.int64)))


def _load(name, split, as_supervised=True, with_info=False):
    """`tensorflow_datasets.load` for 'cifar10', serving digits shaped like CIFAR-10 (32x32x3 uint8)."""
    if name != "cifar10" or not as_supervised:
        raise ValueError(f"only tfds.load('cifar10', as_supervised=True) is stood in for, got {name!r}")
    (x_train, y_train), (x_test, y_test) = _digits(24, 4)
    x = {"train": np.repeat(x_train, 3, axis=-1), "test": np.repeat(x_test, 3, axis=-1)}
    y = {"train": y_train, "test": y_test}
    datasets = [_split(x, y, s) for s in split] if isinstance(split, (list, tuple)) else _split(x, y, split)
    if not with_info:
        return datasets
    info = types.SimpleNamespace(splits={k: types.SimpleNamespace(num_examples=len(v)) for k, v in x.items()})
    return datasets, info


tfds = types.SimpleNamespace(load=_load)


def constant_tensors(tflite_file, dtype=np.int8):
    """The constant kernels of a .tflite file (a path or its bytes): {name: (array, axis)}.

    `axis` is the quantized dimension of a per-channel kernel, None for a float one or a per-tensor one (one scale,
    which the converter may write once per channel).

    Args:
        tflite_file: a path or the file's bytes.
        dtype: which constants (int8: quantized kernels; float32: a float file's kernels).

    Which tensors are constant (hold a buffer) comes from the flatbuffer; their values and quantization axis from
    LiteRT's interpreter.
    """
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    content = open(tflite_file, "rb").read() if isinstance(tflite_file, str) else bytes(tflite_file)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    constant = {t.name.decode() if isinstance(t.name, bytes) else t.name
                for t in model.subgraphs[0].tensors if t.buffer and model.buffers[t.buffer].data is not None}
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    tensors = {}
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == dtype and detail["name"] in constant and len(detail["shape"]) >= 2:
            quantization = detail["quantization_parameters"]
            per_channel = len(set(quantization["scales"].tolist())) > 1  # the converter repeats a per-tensor scale
            axis = quantization["quantized_dimension"] if per_channel else None
            tensors[detail["name"]] = (interpreter.get_tensor(detail["index"]), axis)
    return tensors


def values_per_channel(array, axis):
    """The number of distinct values in each slice of `array` along `axis` (`[all of them]` for axis None)."""
    if axis is None:
        return [len(np.unique(array))]
    moved = np.moveaxis(array, axis, 0).reshape(array.shape[axis], -1)
    return [len(np.unique(row)) for row in moved]
