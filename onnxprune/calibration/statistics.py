"""Statistics of all calibrated tensors, and the step from statistics to a table."""

from __future__ import annotations

import warnings

import numpy as np

from onnxprune.calibration.calibrators import HISTOGRAM_METHODS, METHODS, compute_range
from onnxprune.calibration.histogram import TensorStats
from onnxprune.calibration.table import CalibrationTable, TensorRange
from onnxprune.errors import UsageError


class Statistics:
    """{tensor name: TensorStats} plus the number of samples they were collected on."""

    def __init__(self, tensors: dict[str, TensorStats], samples: int = 0):
        self.tensors = tensors
        self.samples = samples
        self.skipped: dict[str, str] = {}  # name -> why it is not in the table
        self.execution: dict | None = None  # how workers shared the work (onnxprune.distributed)

    def update(self, name: str, array: np.ndarray, stride: int = 1) -> None:
        """A batch of a tensor's values (histogram: every ``stride``-th value, see TensorStats)."""
        if name in self.skipped:
            return
        if array.dtype.kind != "f":
            self.skip(name, f"not a float tensor ({array.dtype})")
            return
        self.tensors[name].update(array, stride)

    def update_reduced(self, name: str, low, high, count, total, sample=None, stride: int = 1) -> bool:
        """A batch reduced inside the model: min, max, number of values, their sum, and maybe a
        systematic sample (every ``stride``-th value). False when NaN/Inf made the reductions
        useless (a NaN or infinite sum): the caller then reads that batch of the tensor whole."""
        if name in self.skipped:
            return True
        if np.asarray(low).dtype.kind != "f":
            self.skip(name, f"not a float tensor ({np.asarray(low).dtype})")
            return True
        if not count:
            return True
        if not (np.isfinite(low) and np.isfinite(high) and np.isfinite(total)):
            return False
        stats = self.tensors[name]
        stats.update_range(float(low), float(high), count=int(count))
        if sample is not None:
            stats.count_sample(sample, stride)
        return True

    def skip(self, name: str, why: str) -> None:
        """Leave ``name`` out of the table, saying why."""
        self.skipped[name] = why
        self.tensors.pop(name, None)

    def merge(self, other: Statistics) -> Statistics:
        """Statistics of both datasets together (in place, returns self)."""
        for name, stats in other.tensors.items():
            if name in self.tensors:
                self.tensors[name].merge(stats)
            elif name not in self.skipped:
                self.tensors[name] = stats.copy()
        self.skipped.update(other.skipped)
        for name in other.skipped:
            self.tensors.pop(name, None)
        self.samples += other.samples
        return self

    def finish(self) -> Statistics:
        """Drop tensors that never saw a finite value; warn about NaN/Inf."""
        dirty = []
        for name, stats in list(self.tensors.items()):
            if stats.count == 0:
                self.skip(name, "no finite values" if stats.nonfinite else "no values (empty tensor)")
            elif stats.nonfinite:
                dirty.append(name)
        if dirty:
            listed = ", ".join(f"'{n}'" for n in dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
            warnings.warn(
                f"tensor {listed} produced NaN/Inf on the calibration data; ignored those values", stacklevel=3
            )
        return self

    def compute(self, method: str = "minmax", **options) -> CalibrationTable:
        """Ranges by ``method`` (options: percentile=99.99, symmetric=False)."""
        if method not in METHODS:
            raise UsageError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
        if method in HISTOGRAM_METHODS and not all(s.histogram for s in self.tensors.values()):
            raise UsageError(f"method '{method}' needs histograms; collect with histogram=True")
        ranges = {n: TensorRange(*compute_range(s, method, **options)) for n, s in self.tensors.items()}
        table = CalibrationTable(
            ranges,
            method=method,
            samples=self.samples,
            options=dict(options),
            summary={n: s.summary() for n, s in self.tensors.items()},
            skipped=dict(self.skipped),
        )
        table.execution = self.execution
        return table
