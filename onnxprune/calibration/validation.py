"""Checking data against a model's inputs: names, per-sample shapes, dtypes, NaN/Inf.

Axis 0 of every model input is the sample (batch) axis; the rest is the per-sample shape.
Symbolic dimensions accept any size. Dtypes convert when numpy calls the conversion
'same_kind' (float64 -> float32, int64 -> int32 when the values fit, uint8 -> float32);
anything else (float -> int, complex -> float, strings) is refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxprune.errors import DataError, UnsupportedError

Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[Dim, ...] | None  # None: rank unknown
    dtype: np.dtype | None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def check_static(self, shape: tuple[int, ...] | None, dtype: np.dtype | None, where: str) -> None:
        """Shape (samples first) and dtype of stored data, before reading it."""
        if shape is not None and self.shape is not None:
            expected, given = self.shape[1:], tuple(shape[1:])
            fits = len(expected) == len(given) and all(
                not isinstance(e, int) or e == g for e, g in zip(expected, given)
            )
            if not fits:
                raise DataError(
                    f"input '{self.name}': expected samples of shape {_fmt(expected)} "
                    f"(model input {_fmt(self.shape)}), got {_fmt(given)} in {where} "
                    f"(array of shape {_fmt(shape)})"
                )
        if dtype is not None and self.dtype is not None and not np.can_cast(dtype, self.dtype, casting="same_kind"):
            raise DataError(
                    f"input '{self.name}': model expects {self.dtype.name}, {where} has {np.dtype(dtype).name} "
                    "(no safe conversion)"
                )

    def convert(self, array: np.ndarray, where: str) -> np.ndarray:
        if self.dtype is None or array.dtype == self.dtype:
            return array
        if array.dtype.kind in "iu" and self.dtype.kind in "iu" and array.size:
            info = np.iinfo(self.dtype)
            low, high = array.min(), array.max()
            if low < info.min or high > info.max:
                raise DataError(
                    f"input '{self.name}': values in {where} span [{low}, {high}], "
                    f"outside the model's {self.dtype.name}"
                )
        return array.astype(self.dtype)


def model_inputs(model: ir.Model) -> dict[str, InputSpec]:
    """The model's real inputs (graph inputs without initializers), in order."""
    specs = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = None
        if value.shape is not None:
            shape = tuple(
                d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)
                for d in value.shape
            )
            if not shape:
                raise UnsupportedError(
                    f"model input '{value.name}' is a scalar; datasets need a sample (batch) axis"
                )
        dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else None
        specs[value.name] = InputSpec(value.name, shape, dtype)
    return specs


def check_batch(
    arrays: dict[str, np.ndarray],
    specs: dict[str, InputSpec],
    where: str,
    samples: np.ndarray,
    rows: np.ndarray,
    multi_row: bool = True,
) -> dict[str, np.ndarray]:
    """Shape, dtype and finiteness of one piece of a batch; returns it converted.

    ``samples`` are the dataset-wide indices of the rows, ``rows`` their rows in ``where``.
    """
    checked = {}
    for name, array in arrays.items():
        spec = specs.get(name)
        if spec is not None:
            spec.check_static(array.shape, array.dtype, where)
            array = spec.convert(array, where)
        if array.dtype.kind in "fc" and array.size and not np.isfinite(array).all():
            bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            i = int(np.argmax(bad))
            what = "NaN" if np.isnan(array[i]).any() else "Inf"
            row = f", row {rows[i]}" if multi_row else ""
            raise DataError(f"input '{name}': sample {samples[i]} ({where}{row}) contains {what}")
        checked[name] = array
    return checked


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
