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

Two sources for ``x``: the original model (default: both the statistics and the solves are
independent per layer, one pass over the data), or (``sequential``) the pruned model with
the layers upstream already refitted, so that each fit also absorbs the error that reaches
it; one pass per depth of refitted layers, the original's ``y`` read from a copy.
A layer whose system is ill-conditioned keeps its sliced weights with the bias re-centred
on the data (= mean compensation). Handled: Conv (groups=1), Gemm, MatMul with a constant
weight. Grouped/depthwise Conv and ConvTranspose consumers keep the mean compensation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune import runtime
from onnxprune.errors import DataError
from onnxprune.passes.cleanup import ShapeInference
from onnxprune.passes.prune.activations import FETCH_BUDGET
from onnxprune.passes.prune.group import Group, PrunePlan, Role
from onnxprune.passes.prune.lstsq import NormalEquations
from onnxprune.passes.prune.refit import LayerFit, Target, consumer_layer, find_targets
from onnxprune.passes.prune.rewrite import apply_plan

# Ridge strength (see lstsq.py: λ = RIDGE · tr(Cxx) / rows). Measured on the test zoo with
# 64 calibration samples (random weights, 40 % of channels removed, output error vs the
# original): 1e-3 → 0.01 → 0.1 lowers the error on 7 of 8 architectures, 0.1 raises it on
# SqueezeNet; digits accuracy is the same from 1e-3 to 0.1 (bench/prune_bench.py --digits).
RIDGE = 0.01
# Bytes of normal equations held at once: more layers than fit are accumulated in more passes.
STATS_BUDGET = 1 << 30

Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


def prune_and_refit(
    model: ir.Model,
    groups: Sequence[Group],
    plan: PrunePlan,
    batches: Batches,
    *,
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
    plan's, then one per refitted layer) and the per-layer report."""
    ridge = RIDGE if ridge is None else ridge
    targets, skipped = find_targets(groups, plan, seed)
    refit = {id(t.layer) for t in targets}
    needed = {  # groups with a consumer that still relies on the mean compensation
        g.id: plan.keep[g.id] for g in groups
        if g.id in plan.keep and any(id(consumer_layer(s)) not in refit for s in g.by_role(Role.CONSUMER))
    }
    means = channel_means(PrunePlan(needed)) if channel_means is not None and needed else None
    original = None
    if sequential and targets:  # the original's outputs are read from a copy
        original = ir.serde.deserialize_model(ir.to_proto(model))
        index = {id(n): i for i, n in enumerate(model.graph)}
        copied = list(original.graph)
        for t in targets:
            t.y_value = copied[index[id(t.layer)]].outputs[0]
    elif targets:
        _accumulate(targets, batches, model, model, ridge, pruned_input=False, progress=progress)
    for t in targets:
        t.zero_removed()
    changes = apply_plan(model, groups, plan, channel_constants=means)
    levels = _levels(model.graph, targets) if original is not None else [targets]
    for level in levels:
        if original is not None:
            _accumulate(level, batches, model, original, ridge, pruned_input=True, progress=progress)
        for t in level:
            t.write(model.graph, *t.solution)
    fits = [t.report for t in targets] + skipped
    return changes + [f.line() for f in fits], fits


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
    targets: list[Target], batches: Batches, x_model: ir.Model, y_model: ir.Model, ridge: float,
    *, pruned_input: bool, progress: bool,
) -> None:
    """Stream the calibration data through ONNX Runtime into each target's normal equations
    (inputs read from ``x_model``, outputs from ``y_model``), then solve them. Targets are
    taken in passes of at most STATS_BUDGET bytes of equations."""
    passes: list[list[Target]] = [[]]
    used = 0
    for t in targets:
        size = 8 * (t.sliced.shape[0] + 1) * sum(t.sliced.shape)
        if passes[-1] and used + size > STATS_BUDGET:
            passes.append([])
            used = 0
        passes[-1].append(t)
        used += size
    for group in passes:
        for t in group:
            t.equations = NormalEquations(*t.sliced.shape)
        _stream(group, batches, x_model, y_model, pruned_input, progress)
        for t in group:
            t.solve(ridge)


def _stream(targets, batches, x_model, y_model, pruned_input: bool, progress: bool) -> None:
    inputs = set(runtime.input_specs(x_model))
    same = y_model is x_model
    x_values = [t.x_value for t in targets] + ([t.y_value for t in targets] if same else [])
    with contextlib.ExitStack() as stack:
        stack.enter_context(_exposed(x_model, x_values))
        x_sess = stack.enter_context(runtime.session(x_model))
        if not same:
            stack.enter_context(_exposed(y_model, [t.y_value for t in targets]))
        y_sess = x_sess if same else stack.enter_context(runtime.session(y_model))
        rows = 0
        for feeds in tqdm(batches(), desc="reconstruct", unit="batch", disable=not progress, leave=False):
            feeds = {k: v for k, v in feeds.items() if k in inputs}
            batch = len(next(iter(feeds.values()))) if feeds else 1
            for chunk in _fetch_chunks(targets, batch):
                x_names = list(dict.fromkeys(t.x_value.name for t in chunk))
                y_names = list(dict.fromkeys(t.y_value.name for t in chunk))
                if same:
                    names = list(dict.fromkeys(x_names + y_names))
                    got = dict(zip(names, runtime.run_session(x_sess, names, feeds)))
                    xs = ys = got
                else:
                    xs = dict(zip(x_names, runtime.run_session(x_sess, x_names, feeds)))
                    ys = dict(zip(y_names, runtime.run_session(y_sess, y_names, feeds)))
                for t in chunk:
                    t.update(xs[t.x_value.name], ys[t.y_value.name], pruned_input)
            rows += batch
    if rows == 0:
        raise DataError("calibration data is empty")


def _fetch_chunks(targets: list[Target], batch: int) -> list[list[Target]]:
    """Targets whose input and output tensors for one batch fit in FETCH_BUDGET bytes."""
    chunks: list[list[Target]] = [[]]
    used = 0
    for t in targets:
        nbytes = sum(
            math.prod(d if isinstance(d, int) else 1 for d in (v.shape or ())[1:]) * batch * 4
            for v in (t.x_value, t.y_value)
        )
        if chunks[-1] and used + nbytes > FETCH_BUDGET:
            chunks.append([])
            used = 0
        chunks[-1].append(t)
        used += nbytes
    return chunks


@contextlib.contextmanager
def _exposed(model: ir.Model, values: list[ir.Value]):
    """``values`` as extra graph outputs while the block runs (the outputs are restored)."""
    if any(v.type is None for v in values):
        ShapeInference()(model)
    added = list({id(v): v for v in values if not v.is_graph_output()}.values())
    model.graph.outputs.extend(added)
    try:
        yield
    finally:
        for _ in added:
            model.graph.outputs.pop()
