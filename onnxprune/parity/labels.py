"""Labels for accuracy: found, read and checked before any model runs.

Accepted: one class index per sample (integers, or floats holding integers), or one-hot
rows (``[samples, classes]`` of 0/1 with exactly one 1). Anything else is refused with a
DataError (exit 2) naming what is wrong, before the comparison, pruning or quantization
starts, so a bad label file never costs a run.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxprune.errors import DataError

LABEL_KEYS = ("labels", "label")  # found in the data without --labels


def classifier_classes(model: ir.Model) -> list[int]:
    """Class counts of the outputs that look like classifier scores ([batch, classes], float)."""
    counts = []
    for value in model.graph.outputs:
        shape = value.shape
        if shape is None or len(shape) != 2 or not isinstance(shape[1], int) or shape[1] < 2:
            continue
        if value.dtype is not None and not value.dtype.is_floating_point():
            continue
        counts.append(shape[1])
    return counts


def may_classify(model: ir.Model) -> bool:
    """Whether some output can be a classifier one (rank 2, or rank unknown)."""
    return any(v.shape is None or len(v.shape) == 2 for v in model.graph.outputs)


def as_class_indices(labels: np.ndarray, classes: list[int], where: str = "labels") -> np.ndarray:
    """``labels`` as int64 class indices, one per sample; one-hot rows become their index."""
    labels = np.asarray(labels)
    top = max(classes) if classes else None
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2:
        if top is not None and labels.shape[1] != top and labels.shape[1] not in classes:
            raise DataError(f"{where}: shape {list(labels.shape)} is neither class indices nor one-hot rows "
                            f"of the model's {top} classes")
        if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
            raise DataError(f"{where}: dtype {labels.dtype} is not numeric")
        values = labels.astype(np.float64)
        if not (np.isin(values, (0.0, 1.0)).all() and (values.sum(axis=1) == 1).all()):
            bad = int(np.flatnonzero(~(np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1)))[0])
            raise DataError(f"{where}: 2-D labels must be one-hot rows (a single 1, the rest 0); row {bad} is not "
                            "(probabilities or multi-label targets are not class labels)")
        return values.argmax(axis=1).astype(np.int64)
    if labels.ndim != 1:
        raise DataError(f"{where}: shape {list(labels.shape)}; expected one class index per sample "
                        "or one-hot rows [samples, classes]")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.number):
        raise DataError(f"{where}: dtype {labels.dtype}; expected integer class indices")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise DataError(f"{where}: float values that are not whole numbers; expected class indices")
    indices = labels.astype(np.int64)
    if indices.size and indices.min() < 0:
        raise DataError(f"{where}: negative class index {int(indices.min())}")
    if top is not None and indices.size and indices.max() >= top:
        raise DataError(f"{where}: class index {int(indices.max())} but the model has {top} classes")
    return indices
