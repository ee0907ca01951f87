"""Random inputs for checks that need *a* shape the model runs at, not *the* user's one.

An exactness check (``optimize --verify``) compares the model with itself after each pass:
any shape the model accepts tests the passes, which do not depend on it. So where
:func:`onnxprune.shapes.resolve` finds a dimension nobody decided (a detector's open H/W, a
VAD model's sequence length), the sizes of :data:`PROBE_SIZES` are tried in turn, every open
dimension at once (a named dim keeps one size; the batch stays 1), and the first size the
model runs at is used, and said. The user's ``--input-shape`` still wins. Only when no size
runs does the check ask for the shape, naming the input and the axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxprune import runtime, shapes
from onnxprune.errors import OnnxPruneError, UsageError

PROBE_SIZES = (64, 32, 128, 256, 512, 16)  # small first: a probe run costs little


def open_dims(model: ir.Model) -> list[tuple[str, int, str | None]]:
    """(input, axis, dim name) of every dimension :func:`shapes.resolve` cannot decide."""
    user = shapes.given(model)
    specs = shapes.declared(model)
    batch_names = {dims[0] for dims in specs.values() if dims and isinstance(dims[0], str)}
    found = []
    for name, dims in specs.items():
        if name in user:
            continue
        for axis, d in enumerate(dims):
            if axis > 0 and not isinstance(d, int) and not (isinstance(d, str) and d in batch_names):
                found.append((name, axis, d))
    return found


def _shapes_at(model: ir.Model, size: int, batch: int, only: str | None) -> dict[str, tuple[int, ...]]:
    """Every open dim at ``size`` (``only``: those of that input; the others' stay ``batch``:
    an unnamed open dim of a state input is often its batch axis)."""
    user, specs = shapes.given(model), shapes.declared(model)
    batch_names = {dims[0] for dims in specs.values() if dims and isinstance(dims[0], str)}
    out = {}
    for name, dims in specs.items():
        out[name] = user.get(name) or tuple(
            d if isinstance(d, int)
            else batch if axis == 0 or (isinstance(d, str) and d in batch_names) or only not in (None, name)
            else size
            for axis, d in enumerate(dims))
    return out


def feeds(model: ir.Model, seeds=(0, 1), batch: int = 1) -> tuple[list[dict[str, np.ndarray]], str | None]:
    """Random feeds (one per seed) and, when open dims were probed, a note saying at which shapes."""
    missing = open_dims(model)
    if not missing:
        return [runtime.random_inputs(model, batch=batch, seed=s) for s in seeds], None
    owners = list(dict.fromkeys(m[0] for m in missing))
    variants = [None, owners[0]] if len(owners) > 1 else [None]
    quiet = lambda options: setattr(options, "log_severity_level", 4)  # noqa: E731 - failed probes are expected
    with runtime.session(model, configure=quiet) as sess:
        for size, only in ((size, only) for size in PROBE_SIZES for only in variants):
            concrete = _shapes_at(model, size, batch, only)
            with shapes.input_shapes(concrete):
                made = [runtime.random_inputs(model, batch=batch, seed=s) for s in seeds]
            try:
                runtime.run_session(sess, None, made[0])
            except OnnxPruneError:
                continue
            shown = describe({k: v for k, v in concrete.items() if k in {m[0] for m in missing}})
            return made, (f"random inputs at {shown} (open dims probed: the model runs at this size; "
                          "--input-shape for another)")
    name, axis, dim = missing[0]
    raise UsageError(
        f"input '{name}' axis {axis} ({dim or '?'}) has no size in the model and the model runs at none of "
        f"{', '.join(map(str, PROBE_SIZES))}: give its shape with --input-shape {name}:D0,D1,... or pass data")


def describe(shapes_by_name: Mapping[str, tuple[int, ...]]) -> str:
    return "; ".join(f"{k}:{','.join(map(str, v))}" for k, v in shapes_by_name.items())
