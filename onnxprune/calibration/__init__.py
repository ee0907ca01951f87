"""Calibration data and activation ranges for static quantization.

``open_dataset`` reads sample data (npz, folders of npy/npz or images, iterables) and checks
it against the model; ``calibrate`` streams it through ONNX Runtime and turns per-tensor
statistics into a :class:`CalibrationTable` of ranges (minmax, percentile, entropy, mse).
"""

from onnxprune.calibration.data import Dataset, open_dataset
from onnxprune.calibration.images import Preprocess

__all__ = ["Dataset", "Preprocess", "open_dataset"]
