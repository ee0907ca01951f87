"""Checking data against a model's inputs: names, per-sample shapes, dtypes, NaN/Inf.

Each model input has a sample (batch) axis, axis 0 unless the model says otherwise: a
recurrent state such as [2, batch, 128] has it where the other inputs' batch dimension is
(``batch_axes``); a scalar input (a sample rate...) has none and is fed as is. The other axes
make the per-sample shape. Symbolic dimensions accept any size. Dtypes convert when numpy calls the conversion
'same_kind' (float64 -> float32, int64 -> int32 when the values fit, uint8 -> float32);
anything else (float -> int, complex -> float, strings) is refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxprune.errors import DataError
from onnxprune.graphutils import named

Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[Dim, ...] | None  # None: rank unknown
    dtype: np.dtype | None
    batch_axis: int | None = 0  # None: a scalar, the same for every sample

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def per_sample(self, shape) -> tuple:
        """``shape`` without the batch axis."""
        shape = tuple(shape)
        return shape if self.batch_axis is None else shape[: self.batch_axis] + shape[self.batch_axis + 1 :]

    def check_static(self, shape: tuple[int, ...] | None, dtype: np.dtype | None, where: str) -> None:
        """Shape (batch axis included) and dtype of stored data, before reading it."""
        if shape is not None and self.shape is not None:
            if self.batch_axis is not None and len(shape) <= self.batch_axis:
                shape = (*shape, 1)  # too short: reported below as a mismatch
            expected, given = self.per_sample(self.shape), self.per_sample(shape)
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
        dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else None
        specs[named(value)] = InputSpec(named(value), shape, dtype)
    axes = batch_axes(specs)
    return {name: dataclasses.replace(spec, batch_axis=axes[name]) for name, spec in specs.items()}


def batch_axes(specs: dict[str, InputSpec]) -> dict[str, int | None]:
    """Where each input's batch axis is: axis 0, except scalars (none) and inputs whose first
    dimension is fixed and differs from the first input's batch dimension (recurrent states
    like [2, batch, 128]): there the axis holding that dimension (same name, or the same fixed
    size, or the first unnamed/symbolic one)."""
    ranked = [s.shape for s in specs.values() if s.shape]
    batch = ranked[0][0] if ranked else None
    axes: dict[str, int | None] = {}
    for name, spec in specs.items():
        shape = spec.shape
        if shape is not None and not shape:
            axes[name] = None
        elif shape is None or not isinstance(shape[0], int) or shape[0] == batch:
            axes[name] = 0
        elif isinstance(batch, str) and batch in shape:
            axes[name] = shape.index(batch)
        else:
            same = [i for i, d in enumerate(shape)
                    if (d == batch if isinstance(batch, int) else not isinstance(d, int))]
            axes[name] = same[0] if same else 0
    return axes


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
            axis = spec.batch_axis if spec is not None else 0
            rows_first = array[None] if axis is None else np.moveaxis(array, axis, 0)
            bad = ~np.isfinite(rows_first.reshape(len(rows_first), -1)).all(axis=1)
            i = int(np.argmax(bad))
            what = "NaN" if np.isnan(rows_first[i]).any() else "Inf"
            row = f", row {rows[i]}" if multi_row else ""
            raise DataError(f"input '{name}': sample {samples[i]} ({where}{row}) contains {what}")
        checked[name] = array
    return checked


def _fmt(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
