"""The calibration table: a range per tensor, saved as JSON or as an ONNX Runtime cache.

Our JSON (``save``/``load``)::

    {"format": "onnxprune-calibration", "version": 1, "method": "entropy", "samples": 500,
     "options": {...}, "tensors": {"conv1_out": {"min": -1.2, "max": 3.4,
                                                 "count": 802816, "observed_min": ..., ...}}}

ONNX Runtime 1.32's ``quantize_static(..., calibration_cache_path=PATH)`` reads a JSON cache
written by ``onnxruntime.quantization.calibrate.save_tensors_data`` (a ``TensorsData`` of
``TensorData(lowest, highest)``). ``save_ort_cache`` writes that format; ORT then skips its
own calibration (pass ``calibration_data_reader=None``) provided its ``calibrate_method``
matches the cache's method, which we record as MinMax / Entropy / Percentile (mse ranges
are stored as MinMax: ORT applies any cached range as it is).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

from onnxprune.errors import DataError, first_line
from onnxprune.report import write_json

FORMAT = "onnxprune-calibration"
VERSION = 1
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "mse": "MinMax"}


class TensorRange(NamedTuple):
    min: float
    max: float


class CalibrationTable(Mapping[str, TensorRange]):
    """{tensor name: TensorRange(min, max)}, with how it was made."""

    def __init__(
        self,
        ranges: Mapping[str, tuple[float, float]],
        *,
        method: str = "minmax",
        samples: int = 0,
        options: dict | None = None,
        summary: dict[str, dict] | None = None,
        skipped: dict[str, str] | None = None,
    ):
        self.ranges = {n: TensorRange(float(lo), float(hi)) for n, (lo, hi) in ranges.items()}
        self.method = method
        self.samples = samples
        self.options = options or {}
        self.summary = summary or {}  # observed count/min/max/nonfinite per tensor
        self.skipped = skipped or {}  # tensors left out, and why
        self.execution: dict | None = None  # workers and their timing, when several made it

    def __getitem__(self, name: str) -> TensorRange:
        return self.ranges[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)

    def __repr__(self) -> str:
        return f"CalibrationTable(method={self.method!r}, samples={self.samples}, tensors={len(self)})"

    def as_dict(self) -> dict[str, tuple[float, float]]:
        return {n: (r.min, r.max) for n, r in self.ranges.items()}

    def to_json(self) -> dict:
        tensors = {}
        for name, r in self.ranges.items():
            entry = {"min": r.min, "max": r.max}
            observed = self.summary.get(name)
            if observed:
                entry.update(
                    count=observed["count"],
                    observed_min=observed["min"],
                    observed_max=observed["max"],
                    nonfinite=observed["nonfinite"],
                )
            tensors[name] = entry
        return {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "samples": self.samples,
            "options": self.options,
            "tensors": tensors,
            "skipped": self.skipped,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write our JSON format atomically."""
        write_json(path, self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationTable:
        """Read a table written by ``save`` (or an ONNX Runtime JSON calibration cache)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise DataError(f"{path}: cannot read calibration table ({exc.strerror or exc})") from None
        except ValueError as exc:
            raise DataError(f"{path}: not a calibration table (invalid JSON: {first_line(exc)})") from None
        if isinstance(data, dict) and data.get("CLS") == "TensorsData":
            return cls._from_ort(data, path)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DataError(f"{path}: not an onnxprune calibration table (no \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise DataError(f"{path}: calibration table version {data.get('version')} (this onnxprune reads {VERSION})")
        ranges, summary = {}, {}
        for name, entry in (data.get("tensors") or {}).items():
            ranges[name] = _checked_range(entry.get("min"), entry.get("max"), name, path)
            if "count" in entry:
                summary[name] = {
                    "count": entry["count"],
                    "min": entry.get("observed_min"),
                    "max": entry.get("observed_max"),
                    "nonfinite": entry.get("nonfinite", 0),
                }
        return cls(
            ranges,
            method=data.get("method", "minmax"),
            samples=int(data.get("samples", 0)),
            options=data.get("options") or {},
            summary=summary,
            skipped=data.get("skipped") or {},
        )

    def save_ort_cache(self, path: str | os.PathLike, ort_method: str | None = None) -> Path:
        """Write the JSON cache ONNX Runtime's ``quantize_static(calibration_cache_path=...)`` reads."""
        method = ort_method or ORT_METHODS.get(self.method, "MinMax")

        def scalar(value: float) -> dict:
            return {"data": value, "dtype": "float32", "CLS": "numpy.array"}

        data = {
            name: {"lowest": scalar(r.min), "highest": scalar(r.max), "CLS": "TensorData"}
            for name, r in self.ranges.items()
        }
        payload = {
            "CLS": "TensorsData",
            "data": data,
            "calibration_method": {"CLS": "CalibrationMethod", "value": f"CalibrationMethod.{method}"},
            "smooth_quant": False,
        }
        write_json(path, payload)
        return Path(path)

    @classmethod
    def _from_ort(cls, data: dict, path: Path) -> CalibrationTable:
        method = str((data.get("calibration_method") or {}).get("value", "MinMax")).rsplit(".", 1)[-1]
        ranges = {}
        for name, entry in (data.get("data") or {}).items():
            low, high = (_ort_scalar(entry.get(k)) for k in ("lowest", "highest"))
            ranges[name] = _checked_range(low, high, name, path)
        ours = {v: k for k, v in ORT_METHODS.items() if k != "mse"}
        return cls(ranges, method=ours.get(method, method.lower()))


def _ort_scalar(value):
    if isinstance(value, dict):
        value = value.get("data")
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def _checked_range(low, high, name: str, path: Path) -> TensorRange:
    if not isinstance(low, (int, float)) or not isinstance(high, (int, float)):
        raise DataError(f"{path}: tensor '{name}' has no numeric min/max")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise DataError(f"{path}: tensor '{name}' has an invalid range [{low}, {high}]")
    return TensorRange(float(low), float(high))
