"""Calibration data and activation ranges for static quantization.

``open_dataset`` reads sample data (npz, folders of npy/npz or images, iterables) and checks
it against the model; ``calibrate`` streams it through ONNX Runtime and turns per-tensor
statistics into a :class:`CalibrationTable` of ranges (minmax, percentile, entropy, mse).
``collect`` returns the raw statistics (mergeable across datasets).
"""

from onnxprune.calibration.calibrators import METHODS
from onnxprune.calibration.collect import calibrate, collect
from onnxprune.calibration.data import Dataset, open_dataset
from onnxprune.calibration.histogram import TensorStats
from onnxprune.calibration.images import Preprocess
from onnxprune.calibration.statistics import Statistics
from onnxprune.calibration.table import CalibrationTable, TensorRange
from onnxprune.calibration.tensors import QUANTIZABLE_OPS, default_tensors

__all__ = [
    "METHODS",
    "QUANTIZABLE_OPS",
    "CalibrationTable",
    "Dataset",
    "Preprocess",
    "Statistics",
    "TensorRange",
    "TensorStats",
    "calibrate",
    "collect",
    "default_tensors",
    "open_dataset",
]
