"""Concrete input shapes for models with dynamic dimensions: the one place that decides them.

Exporters leave dimensions open in three ways: a name (``dim_param``, e.g. ``batch``), no
value at all, or ``dim_value: -1`` (Paddle). Loading turns ``-1`` into an unknown dimension
(:func:`normalize_dims`), so the rest of the code sees only ints >= 0, names and None.

Whenever something must run the model without data (self-checks, latency, MACs, random
inputs for parity), :func:`resolve` gives the shapes, in this order:

1. what the user gave (``--input-shape NAME:D0,D1,...``; ``input_shapes=`` in the Python
   API: ``with onnxprune.input_shapes({...}):``), valid for the block it wraps;
2. an open first axis, or a dimension sharing its name with some input's first axis, is
   the batch;
3. anything else open is an error naming the input and the option, never a silent 1.

Callers that have data (calibration, evaluation) run on the data's shapes instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

import onnx_ir as ir

from onnxprune.errors import UsageError
from onnxprune.graphutils import named as _named

Shapes = dict[str, tuple[int, ...]]
_GIVEN: contextvars.ContextVar[Mapping[str, tuple[int, ...]]] = contextvars.ContextVar(
    "onnxprune_input_shapes", default=MappingProxyType({}))


def parse(texts: Iterable[str] | None) -> Shapes:
    """``["x:1,3,224,224", ...]`` -> ``{"x": (1, 3, 224, 224)}`` (a name may contain ':')."""
    shapes: Shapes = {}
    for text in texts or ():
        match = re.fullmatch(r"(.+):\s*(\d+(?:\s*[,x]\s*\d+)*)\s*", text)
        if not match:
            raise UsageError(f"--input-shape '{text}': expected NAME:D0,D1,... (e.g. x:1,3,224,224)")
        dims = tuple(int(d) for d in re.split(r"\s*[,x]\s*", match.group(2)))
        if 0 in dims:
            raise UsageError(f"--input-shape '{text}': dimensions must be at least 1")
        shapes[match.group(1).strip()] = dims
    return shapes


def normalize_dims(model: ir.Model) -> int:
    """Negative dims (Paddle's ``-1``) become unknown dims, in every graph. Returns how many."""
    changed = 0
    for graph in model.graphs():
        values = [*graph.inputs, *graph.outputs, *(v for n in graph for v in n.outputs)]
        for value in values:
            if value.shape is not None and any(isinstance(d, int) and d < 0 for d in value.shape):
                value.shape = ir.Shape([None if isinstance(d, int) and d < 0 else d for d in value.shape])
                changed += 1
    return changed


def _inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _dim(d: int | ir.SymbolicDim) -> int | str | None:
    return d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)


@contextlib.contextmanager
def input_shapes(shapes: Mapping[str, Iterable[int]] | None) -> Iterator[None]:
    """Within this block, models run without data get these input shapes (the CLI's
    ``--input-shape``)::

        with onnxprune.input_shapes({"x": (1, 3, 640, 640)}):
            onnxprune.prune("det.onnx", "det.small.onnx", ratio=0.3)
    """
    token = _GIVEN.set({**_GIVEN.get(), **{k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}})
    try:
        yield
    finally:
        _GIVEN.reset(token)


def given(model: ir.Model) -> Shapes:
    """The user's shapes for this model's inputs, checked against what the model declares."""
    inputs = {_named(v): v for v in _inputs(model)}
    checked: Shapes = {}
    for name, dims in _GIVEN.get().items():
        if name not in inputs:
            raise UsageError(f"--input-shape: the model has no input '{name}' (inputs: {', '.join(inputs)})")
        shape = inputs[name].shape
        if shape is not None:
            if len(shape) != len(dims):
                raise UsageError(f"--input-shape {name}: {len(dims)} dims given, the input has rank {len(shape)}")
            for axis, (d, g) in enumerate(zip(shape, dims)):
                if isinstance(d, int) and d >= 0 and d != g:
                    raise UsageError(f"--input-shape {name}: axis {axis} is fixed to {d} in the model, {g} given")
        checked[name] = dims
    return checked


def declared(model: ir.Model) -> dict[str, tuple[int | str | None, ...]]:
    """Each input's shape as declared: ints, dim names, None (unknown)."""
    return {_named(v): tuple(_dim(d) for d in (v.shape or ())) for v in _inputs(model)}


def resolve(model: ir.Model, batch: int = 1) -> Shapes:
    """A concrete shape for every input (see the module docstring), or a UsageError naming
    the first input with a dimension nobody decided."""
    user = given(model)
    specs = declared(model)
    named: dict[str, int] = {}  # dim names the user's shapes decide
    for name, sizes in user.items():
        for d, g in zip(specs.get(name, ()), sizes):
            if isinstance(d, str):
                named.setdefault(d, g)
    batch_names = {dims[0] for dims in specs.values() if dims and isinstance(dims[0], str)}
    shapes: Shapes = {}
    for name, dims in specs.items():
        if name in user:
            shapes[name] = user[name]
            continue
        concrete = []
        for axis, d in enumerate(dims):
            if isinstance(d, int):
                concrete.append(d)
            elif isinstance(d, str) and d in named:
                concrete.append(named[d])
            elif axis == 0 or (isinstance(d, str) and d in batch_names):
                concrete.append(batch)
            else:
                raise UsageError(missing_message(name, dims))
        shapes[name] = tuple(concrete)
    return shapes


def missing_message(name: str, dims) -> str:
    shown = ",".join("?" if d is None else str(d) for d in dims)
    return (f"input '{name}' has dynamic dimensions [{shown}]: give its shape with "
            f"--input-shape {name}:D0,D1,... or pass data (Python: with onnxprune.input_shapes({{...}}))")


def is_dynamic(model: ir.Model) -> bool:
    """Some input dimension beyond the first is open (MACs and latency depend on it)."""
    return any(not isinstance(d, int) for dims in declared(model).values() for d in dims[1:])
