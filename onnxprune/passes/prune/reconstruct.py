"""Data-driven reconstruction after pruning: a least-squares refit of the layers that read
pruned channels (ThiNet, Luo et al. 2017; He et al. 2017, "Channel Pruning for Accelerating
Very Deep Neural Networks", second step).

Removing input channels of a layer ``y = M x + b`` (``x`` an input row: features, or the
im2col patch of a Conv) changes its output. With calibration data, the kept weights and the
bias are refitted so that the layer's output stays as close as possible to the original's:

    min_{A, c}  Σ_{samples, positions} ‖ y − Aᵀ x_kept − c ‖²  (+ ridge, see :mod:`.lstsq`)

``y`` is the original layer's output (before any activation or BatchNorm: a per-channel
affine map after it does not change the per-output least-squares solution). The fitted
bias supersedes the mean compensation (``channel_constants``) for the layers refitted: their
removed columns are zeroed before :func:`.rewrite.apply_plan`, so it folds nothing into them.

Two sources for ``x``: the original model (the default of ``PrunePass``: one pass over the
data, every layer independent), or (``sequential``) the pruned model with the layers upstream
already refitted, so that each fit also absorbs the error that reaches it (He et al.): one
pass per depth of refitted layers (ResNet-50: 53), the original's ``y`` read from a copy.
``bench/prune_bench.py`` measures the trade-off (``--digits``: accuracy, in
bench/results/prune-digits.json; ``--refit-cost``: output error, time and memory on ResNet-50):
small gains for a cost that grows with depth, so the original's inputs are the default.

Memory: the normal equations, O(D² + D·O) per layer (D = kept inputs × kernel size), at most
STATS_BUDGET bytes at once (more layers: more passes), never O(samples); each batch's
activations are fetched in chunks of FETCH_BUDGET bytes. A layer with fewer rows than inputs
or an ill-conditioned system keeps its sliced weights with the bias re-centred on the data
(= mean compensation). Handled: Conv (groups=1), Gemm, MatMul with a constant weight;
grouped/depthwise Conv and ConvTranspose consumers keep the mean compensation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune.errors import DataError
from onnxprune.graphutils import named
from onnxprune.passes.prune.activations import FETCH_BUDGET, batch_nbytes, budget_chunks, exposed
from onnxprune.passes.prune.fold import consumer_layer
from onnxprune.passes.prune.group import Group, PrunePlan, Role
from onnxprune.passes.prune.lstsq import NormalEquations
from onnxprune.passes.prune.refit import RIDGE, LayerFit, Target, find_targets  # noqa: F401  (RIDGE: re-exported)
from onnxprune.passes.prune.rewrite import apply_plan, checked_removals
from onnxprune.passes.prune.runner import ModelRunner, Session

# Bytes of normal equations held at once: more layers than fit are accumulated in more passes.
STATS_BUDGET = 1 << 30

Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


def prune_and_refit(
    model: ir.Model,
    groups: Sequence[Group],
    plan: PrunePlan,
    batches: Batches,
    *,
    runner: ModelRunner,
    channel_means: Callable[[PrunePlan], Mapping[int, np.ndarray] | None] | None = None,
    sequential: bool = False,
    ridge: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[list[str], list[LayerFit]]:
    """:func:`apply_plan` with the layers reading pruned channels refitted on ``batches()``
    (a callable returning fresh calibration batches). ``channel_means(plan)`` gives the
    channel means to fold (see :func:`apply_plan`) for the groups of a plan: it is asked only
    for the groups still read by a layer that is not refit. Returns the change lines (the
    plan's, then one per refitted layer) and the per-layer report. ``ridge``: a fixed ridge;
    None lets the held-out samples choose it per layer (:meth:`.refit.Target.solve`)."""
    checked_removals(groups, plan)  # UsageError for a bad plan, before any weight changes
    targets, skipped = find_targets(groups, plan, seed)
    refit = {id(t.layer) for t in targets}
    needed = {  # groups with a consumer that still relies on the mean compensation
        g.id: plan.keep[g.id] for g in groups
        if g.id in plan.keep and any(id(consumer_layer(s)) not in refit for s in g.by_role(Role.CONSUMER))
    }
    means = channel_means(PrunePlan(needed)) if channel_means is not None and needed else None
    if targets and not sequential:  # statistics of the original, before anything changes
        _accumulate(targets, batches, model, ridge, runner=runner, progress=progress and "reconstruct")
    reference = ir.serde.deserialize_model(ir.to_proto(model)) if targets and sequential else None
    if reference is not None:  # the original's outputs, read from a copy
        copied = list(reference.graph)
        index = {id(n): i for i, n in enumerate(model.graph)}
        for t in targets:
            t.y_value = copied[index[id(t.layer)]].outputs[0]
    for t in targets:
        t.zero_removed()
    changes = apply_plan(model, groups, plan, channel_constants=means)
    if reference is None:
        for t in targets:
            _write(t, model.graph)
    else:
        levels = _levels(model.graph, targets)
        with exposed(reference, [t.y_value for t in targets]), runner.session(reference) as original:
            for i, level in enumerate(levels):
                label = f"reconstruct {i + 1}/{len(levels)}"
                _accumulate(level, batches, model, ridge, runner=runner, reference=original,
                            progress=progress and label)
                for t in level:  # before the next level reads its inputs
                    _write(t, model.graph)
    fits = [_report(t) for t in targets] + skipped
    return changes + [f.line() for f in fits], fits


def _write(t: Target, graph: ir.Graph) -> None:
    assert t.solution is not None, "written before solved"  # _accumulate solves every target
    t.write(graph, *t.solution)


def _report(t: Target) -> LayerFit:
    assert t.report is not None, "reported before solved"
    return t.report


class Streamed(Protocol):
    """What :func:`_stream` feeds: a layer's input and output, and what takes their batches."""

    x_value: ir.Value
    y_value: ir.Value

    def update(self, x: np.ndarray, y: np.ndarray, pruned_input: bool, first: int = 0) -> None: ...


def _fetch_nbytes(t: Streamed, batch: int) -> float:
    return batch_nbytes(t.x_value, batch) + batch_nbytes(t.y_value, batch)


def _levels(graph: ir.Graph, targets: list[Target]) -> list[list[Target]]:
    """Targets by the number of targets upstream of them: each level's inputs depend only
    on the levels before it."""
    by_id = {id(t.layer): t for t in targets}
    depth: dict[int, int] = {}
    levels: dict[int, list[Target]] = {}
    for node in graph:
        d = max((depth.get(id(v), 0) for v in node.inputs if v is not None), default=0)
        if id(node) in by_id:
            levels.setdefault(d, []).append(by_id[id(node)])
            d += 1
        for out in node.outputs:
            depth[id(out)] = d
    return [levels[k] for k in sorted(levels)]


def _accumulate(
    targets: list[Target], batches: Batches, model: ir.Model, ridge: float | None, *,
    runner: ModelRunner, reference: Session | None = None, progress: str | bool = False,
) -> None:
    """Stream the calibration data through the runner into each target's normal equations,
    then solve them: inputs from ``model``, outputs from ``model`` too (the original) or from
    a ``reference`` session of the original (``model`` is then the pruned one, whose inputs
    already lack the removed channels). Targets are taken in passes of at most STATS_BUDGET
    bytes of equations (float64 sums: (D + 1)·(D + O) numbers, twice: fitted and held-out rows)."""
    passes = budget_chunks(targets, lambda t: 16 * (t.sliced.shape[0] + 1) * sum(t.sliced.shape), STATS_BUDGET)
    for group in passes:
        for t in group:
            t.equations = NormalEquations(*t.sliced.shape)
            t.heldout = NormalEquations(*t.sliced.shape)
        _stream(group, batches, model, reference, progress, runner)
        for t in group:
            t.solve(ridge)


def _stream(
    targets: Sequence[Streamed], batches: Batches, model: ir.Model, reference: Session | None,
    progress: str | bool, runner: ModelRunner,
) -> None:
    """One pass over the calibration batches (``progress``: the bar's label, or False)."""
    inputs = runner.input_names(model)
    outputs = [t.x_value for t in targets] + ([t.y_value for t in targets] if reference is None else [])
    rows = 0
    with exposed(model, outputs), runner.session(model) as sess:
        for feeds in tqdm(batches(), desc=progress or "", unit="batch", disable=not progress, leave=False,
                          total=getattr(batches, "total", None)):  # set by the stage API when known
            feeds = {k: v for k, v in feeds.items() if k in inputs}
            batch = len(next(iter(feeds.values()))) if feeds else 1
            chunks = budget_chunks(targets, functools.partial(_fetch_nbytes, batch=batch), FETCH_BUDGET)
            for chunk in chunks:
                x_names = [named(t.x_value) for t in chunk]
                y_names = [named(t.y_value) for t in chunk]
                if reference is None:
                    names = list(dict.fromkeys(x_names + y_names))
                    xs = ys = dict(zip(names, sess.run(names, feeds)))
                else:
                    names = list(dict.fromkeys(x_names))
                    xs = dict(zip(names, sess.run(names, feeds)))
                    names = list(dict.fromkeys(y_names))
                    ys = dict(zip(names, reference.run(names, feeds)))
                for t in chunk:
                    x, y = xs[named(t.x_value)], ys[named(t.y_value)]
                    t.update(x, y, pruned_input=reference is not None, first=rows)
            rows += batch
    if rows == 0:
        raise DataError("calibration data is empty")
