"""Bring an old-opset model up to the opset a stage needs, with onnx's version converter.

Paddle and older exporters write opset 11/12; per-channel QDQ needs 13 (the ``axis`` of
QuantizeLinear). The user should not have to convert by hand what the tool can: the stage
converts, says so, and only falls back (or refuses) when the converter cannot.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import version_converter

from onnxprune import profiling
from onnxprune.errors import first_line


def upgrade(model: ir.Model, opset: int) -> tuple[ir.Model, str | None, str | None]:
    """``(model, note, failure)``: the model at ``opset`` or above (the same object when it
    already is), a note saying what was converted, or why the conversion failed (then the
    model is returned unchanged)."""
    current = model.opset_imports.get("", 0)
    if current >= opset:
        return model, None, None
    try:
        with profiling.phase("opset upgrade"):
            proto = version_converter.convert_version(ir.to_proto(model), opset)
            onnx.checker.check_model(proto)
            converted = ir.from_proto(proto)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/checker errors
        return model, None, f"onnx's version converter cannot take opset {current} to {opset} ({first_line(exc)})"
    for key, value in model.meta.items():
        converted.meta[key] = value
    return converted, f"converted from opset {current} to {opset} (onnx version converter)", None
