"""int16 activations for chosen layers in an int8 file, through Google's AI Edge Quantizer (`ai-edge-quantizer`).

TFLite's converter gives every activation of a file one type (int8, or int16 in "int16x8" mode); the runtime runs
each op in its own type, with QUANTIZE ops requantizing between int8 and int16. AI Edge Quantizer writes such files
from a float .tflite and a recipe of regular expressions over the ops' output tensor names: int8 everywhere
(`static_wi8_ai8`), int16 activations with int8 weights for the chosen layers, and float (`NO_QUANTIZE`) for
`keep_float`. The model is exported as a `coded_copy`, so each op maps to its layers exactly, and the file's tensor
names are decoded back to the layer names.

Calibration: AI Edge Quantizer merges batches with a moving average (which narrows the ranges); here each batch is
calibrated alone and the ranges are merged as min/max, as TFLite's own calibration does.
"""

import contextlib
import io
import re

from kopt.convert import samples as data_lib
from kopt.convert._selective import coded_copy, decode_file, file_layers

_BATCH = 32  # samples per calibration batch: the calibrator keeps every tensor of a batch


def _regex(scopes):
    """A regular expression that matches exactly these op scopes (AI Edge Quantizer's scope of an op: its output
    tensor names, each followed by ';')."""
    return "^(?:" + "|".join(re.escape(scope) for scope in scopes) + ")$"


def _import():
    try:
        from ai_edge_quantizer import qtyping, quantizer, recipe
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.utils import qsv_utils
    except ImportError as error:
        raise ImportError("`int16_activations` needs Google's AI Edge Quantizer: pip install 'kopt[mixed]' (or "
                          "pip install ai-edge-quantizer).") from error
    return qtyping, quantizer, recipe, AlgorithmName, qsv_utils


class EdgeQuantizer:
    """A float Keras model as a float .tflite, calibrated once; `quantize(int16, keep_float)` makes its files.

    Args:
        model: a float Keras model, with kopt's integer forms applied (as `to_tflite` converts it).
        samples: calibration samples, one array per model input.
    """

    def __init__(self, model, samples):
        from kopt.convert._converter import tflite_converter

        qtyping, quantizer, recipe, AlgorithmName, qsv_utils = _import()
        self.model_name = model.name
        converted, self.codes = coded_copy(model)
        with tflite_converter(converted, None) as converter:
            self.float_model = converter.convert()
        self.ops, self.layers = file_layers(self.float_model, self.codes)
        names = [spec.name for spec in data_lib.model_inputs(converted)]
        self._recipe = recipe
        self._quantizer = quantizer
        self._ops = qtyping.TFLOperationName.ALL_SUPPORTED
        self._no_quantize = AlgorithmName.NO_QUANTIZE
        base = self._new()
        self.ranges = {}
        with contextlib.redirect_stdout(io.StringIO()):
            for start in range(0, data_lib.count(samples), _BATCH):
                batch = {name: s[start:start + _BATCH] for name, s in zip(names, samples)}
                ranges = base.calibrate({"serving_default": [batch]}, num_threads=1)
                for tensor, qsv in ranges.items():
                    known = self.ranges.get(tensor)
                    self.ranges[tensor] = qsv if known is None else qsv_utils.min_max_update(known, qsv)

    def _new(self):
        quantizer = self._quantizer.Quantizer(bytearray(self.float_model))
        quantizer.load_quantization_recipe(self._recipe.static_wi8_ai8())
        return quantizer

    def _scopes(self, layers):
        layers = set(layers)
        return ["".join(f"{t};" for t in op["tensors"]) for op in self.ops if layers.intersection(op["layers"])]

    def quantize(self, int16=(), keep_float=()):
        """The file (coded tensor names) with int16 activations for the ops of `int16`, float for `keep_float`,
        int8 for the rest."""
        quantizer = self._new()
        if int16:
            quantizer.add_static_config(regex=_regex(self._scopes(int16)), operation_name=self._ops,
                                        activation_num_bits=16, weight_num_bits=8)
        if keep_float:
            quantizer.update_quantization_recipe(regex=_regex(self._scopes(keep_float)), operation_name=self._ops,
                                                 algorithm_key=self._no_quantize)
        with contextlib.redirect_stdout(io.StringIO()):  # its size and time report
            return bytes(quantizer.quantize(self.ranges, enable_progress_report=False).quantized_model)

    def decode(self, content):
        return decode_file(content, self.codes)
