"""One layer that reads pruned channels, seen as ``y = M x + bias`` for the least-squares refit.

The weight, read as the layer uses it (through the exporter's Transposes), becomes the
output-space matrix ``M`` [O, D]: Conv ``W.reshape(O, C·K)`` (rows of the input: im2col
patches), Gemm ``alpha · B'ᵀ``, MatMul ``Bᵀ``. The bias is Conv ``B``, Gemm ``beta · C``, and
0 for MatMul (torch's Linear adds it in the next node: the refit's bias goes there, through
:func:`.fold.install`). Refitting solves for the kept columns of the kept rows
(:mod:`.lstsq`) and writes them back in the pruned layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import attr, set_initializer
from onnxprune.passes.prune import fold
from onnxprune.passes.prune.fold import consumer_layer
from onnxprune.passes.prune.group import Group, PrunePlan, Role, Slot
from onnxprune.passes.prune.layers import Weight, resolve_weight
from onnxprune.passes.prune.lstsq import NormalEquations, conv_rows
from onnxprune.passes.prune.rules import constant, is_const

# Rows (output positions) sampled per batch and layer when a batch has more (seeded).
MAX_ROWS = 4096
# Every HOLDOUT-th calibration sample is held out: the refit's ridge, and whether to refit a
# layer at all, are chosen by the error on those samples (a fit judged on its own rows always
# looks better than the sliced weights, and it can overfit a few images).
HOLDOUT = 4
# Ridge strength without held-out samples (see lstsq.py: λ = RIDGE · tr(Cxx) / rows).
# Chosen among 1e-3, 0.01 and 0.1 by the output error on the test zoo's architectures (the
# largest raised it on some) and digits accuracy (bench/prune_bench.py --digits).
RIDGE = 0.01
# Ridge strengths tried on the held-out samples (pulling towards the sliced weights).
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclasses.dataclass
class LayerFit:
    """One refitted (or skipped) layer in the report."""

    layer: str | None
    op: str
    inputs: tuple[int, int] | tuple[None, None]  # input channels/features read: before, after pruning
    status: str  # "refit"; "recentred": sliced weights, bias re-centred; "sliced": as sliced; "skipped"
    error_before: float | None = None  # relative output error, sliced weights + mean compensation
    error_after: float | None = None  # after the refit (calibration data)
    rows: int = 0  # rows (samples × positions) in the fit
    note: str | None = None
    heldout_before: float | None = None  # the same errors on the held-out calibration samples
    heldout_after: float | None = None
    ridge: float | None = None  # the ridge the held-out samples chose (status "refit")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        head = f"{self.layer}: "
        if self.status == "skipped":
            return head + f"not refit ({self.note})"
        error = f"relative output error {self.error_before:.3f} -> {self.error_after:.3f}"
        if self.heldout_before is not None:
            error = f"held-out relative output error {self.heldout_before:.3f} -> {self.heldout_after:.3f}"
        if self.status == "refit":
            ridge = f", ridge {self.ridge:g}" if self.ridge is not None else ""
            return head + f"refit by least squares on {self.rows} rows{ridge}, {error}"
        if self.status == "sliced":
            return head + f"sliced weights, bias unchanged ({self.note}), {error}"
        return head + f"sliced weights, bias re-centred ({self.note}), {error}"


class Target:
    """A layer to refit: the inputs it loses and its weight read as an output-space matrix."""

    def __init__(self, layer: ir.Node, removed_in: np.ndarray, removed_out: np.ndarray, seed: int) -> None:
        self.layer, self.op = layer, layer.op_type
        weight, array = _weight(layer)
        self.perm = weight.perm
        w = np.transpose(array, self.perm)  # as the layer reads it
        self.dtype = w.dtype
        self.kernel = tuple(w.shape[2:]) if self.op == "Conv" else ()
        self.scale = attr(layer, "alpha", 1.0) if self.op == "Gemm" else 1.0
        self.transposed = self.op == "Gemm" and bool(attr(layer, "transB", 0))
        matrix = self.matrix(w)
        outputs, self.width = matrix.shape[0], matrix.shape[1] // math.prod(self.kernel)
        self.kept_in = np.setdiff1d(np.arange(self.width), removed_in)
        self.kept_out = np.setdiff1d(np.arange(outputs), removed_out)
        self.sliced = matrix[np.ix_(self.kept_out, self.columns(self.kept_in))].T  # A0 [D, O]
        self.bias = _output_bias(layer, outputs)[self.kept_out]
        self.rng = np.random.default_rng(seed)
        self.equations: NormalEquations | None = None  # while its calibration pass runs
        self.heldout: NormalEquations | None = None  # the held-out samples' rows
        x_value = layer.inputs[0]
        assert x_value is not None, f"{layer.op_type} '{layer.name}' has no input"  # a consumer reads it
        self.x_value, self.y_value = x_value, layer.outputs[0]
        self.solution: tuple[np.ndarray, np.ndarray] | None = None
        self.report: LayerFit | None = None

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """``M`` [O, D] with ``y = M x + bias`` (Conv columns: channel-major, then kernel)."""
        if self.op == "Conv":
            return w.reshape(w.shape[0], -1).astype(np.float64)
        matrix: np.ndarray = self.scale * (w if self.transposed else w.T).astype(np.float64)
        return matrix

    def columns(self, channels: np.ndarray) -> np.ndarray:
        """The columns of ``M`` that read the given input channels."""
        k = math.prod(self.kernel)
        columns: np.ndarray = (channels[:, None] * k + np.arange(k)[None, :]).reshape(-1)
        return columns

    def update(self, x: np.ndarray, y: np.ndarray, pruned_input: bool, first: int = 0) -> None:
        """Add one batch: the layer's input ``x`` (already without the removed channels when
        read from the pruned model) and the original output ``y``; ``first`` is the number
        of the batch's first sample (every HOLDOUT-th sample goes to the held-out rows)."""
        if self.op == "Conv":
            per = math.prod(y.shape[2:])
            index = self._sample(y.shape[0] * per)
            x = x if pruned_input else np.take(x, self.kept_in, axis=1)
            rows = conv_rows(self.layer, self.kernel, x, y.shape, index)
            targets = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[index]
        else:
            x = x.reshape(-1, x.shape[-1])
            per = max(len(x) // max(y.shape[0], 1), 1)
            index = self._sample(len(x))
            rows = x[index] if pruned_input else x[np.ix_(index, self.kept_in)]
            targets = y.reshape(-1, y.shape[-1])[index]
        targets = targets[:, self.kept_out]
        held = (first + index // per) % HOLDOUT == HOLDOUT - 1
        assert self.equations is not None, "update() before the calibration pass set the equations"
        if self.heldout is None or not held.any():
            self.equations.update(rows, targets)
            return
        self.equations.update(rows[~held], targets[~held])
        self.heldout.update(rows[held], targets[held])

    def _sample(self, count: int) -> np.ndarray:
        if count <= MAX_ROWS:
            return np.arange(count)
        return np.sort(self.rng.choice(count, MAX_ROWS, replace=False))

    def solve(self, ridge: float | None = None) -> None:
        """Choose the layer's weights and bias (the equations are then freed): the refit at
        the ridge with the lowest error on the held-out samples, the sliced weights with the
        bias re-centred, or the sliced weights as they are, whichever the held-out samples
        prefer; the choice is then re-solved on all the samples. Without held-out samples,
        the refit at ``ridge`` unless it is no better on the fitted rows (re-centred bias)."""
        fit, held, self.equations, self.heldout = self.equations, self.heldout, None, None
        assert fit is not None, "solve() without a calibration pass"
        a0 = self.sliced
        c0 = fit.recentred(a0) if fit.n else self.bias
        before = fit.error(a0, c0) if fit.n else None
        if held is None or held.n == 0 or fit.n == 0:
            if held is not None:
                fit.absorb(held)
                c0 = fit.recentred(a0)
                before = fit.error(a0, c0)
            self._solve_on_fit(fit, a0, c0, before, ridge)
            return
        ridges = RIDGES if ridge is None else (ridge,)
        options: list[tuple[str, float | None, tuple[np.ndarray, np.ndarray]]] = [
            ("sliced", None, (a0, self.bias)), ("recentred", None, (a0, c0))
        ]
        path = fit.solve_path(ridges, a0)
        options += [("refit", r, s) for r, s in zip(ridges, path) if not isinstance(s, str)]
        scores = [held.error(*solution) for _, _, solution in options]
        best = int(np.argmin(scores))
        status, chosen_ridge, solution = options[best]
        note = None
        if status != "refit":
            note = (path[0] if isinstance(path[0], str) and len(options) == 2
                    else "the refit was no better on held-out samples")
        fit.absorb(held)  # the choice, fitted on all the samples
        if status == "recentred":
            solution = (a0, fit.recentred(a0))
        elif status == "refit":
            assert chosen_ridge is not None  # every refit option has its ridge
            again = fit.solve_path([chosen_ridge], a0)[0]
            solution = again if not isinstance(again, str) else solution
        self.solution = solution
        self.report = LayerFit(self.layer.name, self.op, (self.width, len(self.kept_in)), status,
                               fit.error(a0, fit.recentred(a0)), fit.error(*solution), fit.n, note,
                               scores[1], scores[best], chosen_ridge)

    def _solve_on_fit(
        self, eq: NormalEquations, a0: np.ndarray, c0: np.ndarray, before: float | None, ridge: float | None
    ) -> None:
        solved = eq.solve(RIDGE if ridge is None else ridge)
        status, note = "refit", None
        if isinstance(solved, str):
            status, note, solved = "recentred", solved, (a0, c0)
        # solved: rows were seen, so ``before`` is set
        elif before is not None and eq.error(*solved) > before * (1 + 1e-9) + 1e-12:  # the ridge can cost a little
            status, note, solved = "recentred", "the refit was no better", (a0, c0)
        self.solution = solved
        self.report = LayerFit(self.layer.name, self.op, (self.width, len(self.kept_in)), status,
                               before, eq.error(*solved), eq.n, note)

    def zero_removed(self) -> None:
        """Zero the weight columns of the removed inputs, so that no mean is folded here."""
        weight, array = _weight(self.layer)
        w = np.transpose(array, self.perm).copy()
        removed = np.setdiff1d(np.arange(self.width), self.kept_in)
        if self.op == "Conv" or self.transposed:  # inputs on axis 1: Conv W[O, C, ...], Gemm B[N, K]
            w[:, removed] = 0
        else:
            w[removed, :] = 0
        set_initializer(weight.value, np.transpose(w, np.argsort(self.perm)))

    def write(self, graph: ir.Graph, a: np.ndarray, c: np.ndarray) -> None:
        """Set the pruned layer to ``y = aᵀ x + c`` (after :func:`apply_plan` sliced it)."""
        m = a.T
        if self.op == "Conv":
            w = m.reshape(len(self.kept_out), len(self.kept_in), *self.kernel)
        else:
            m = m / self.scale
            w = m if self.transposed else m.T
        weight, _ = _weight(self.layer)
        set_initializer(weight.value, np.transpose(w, np.argsort(self.perm)).astype(self.dtype))
        fold.install(graph, [(self.layer, c - self.bias)], lambda _: np.empty(0, dtype=np.int64))


def _weight(layer: ir.Node) -> tuple[Weight, np.ndarray]:
    """The layer's constant weight (``_unsupported`` let through only layers that have one)."""
    weight = resolve_weight(layer, 1)
    array = constant(weight.value) if weight is not None else None
    assert weight is not None and array is not None, f"{layer.op_type} '{layer.name}': no constant weight"
    return weight, array


def _output_bias(layer: ir.Node, outputs: int) -> np.ndarray:
    """What the layer adds to ``M x`` per output channel (Conv B, Gemm beta·C; 0 for MatMul)."""
    value = layer.inputs[2] if len(layer.inputs) > 2 else None
    if value is None or layer.op_type == "MatMul":
        return np.zeros(outputs)
    bias = np.asarray(constant(value), dtype=np.float64).reshape(-1)
    beta = attr(layer, "beta", 1.0) if layer.op_type == "Gemm" else 1.0
    return beta * np.broadcast_to(bias, (outputs,))


def _unsupported(layer: ir.Node) -> str | None:
    """Why ``layer`` cannot be refit (None: it can)."""
    op = layer.op_type
    if op not in ("Conv", "Gemm", "MatMul"):
        return f"{op}: keeps the mean compensation"
    if op == "Conv" and attr(layer, "group", 1) != 1:
        return "grouped Conv: keeps the mean compensation"
    if op == "Gemm" and attr(layer, "transA", 0):
        return "Gemm with transA"
    weight = resolve_weight(layer, 1)
    if weight is None or not weight.value.is_initializer() or len(weight.value.uses()) != 1:
        return "its weight is shared or not an initializer"
    if weight.value.is_graph_input() or weight.value.is_graph_output():
        return "its weight is a graph input or output"
    if op == "MatMul" and len(weight.perm) != 2:
        return "MatMul with a weight that is not 2-D"
    if layer.outputs[0].shape is None:
        return "its output shape is unknown"
    bias = layer.inputs[2] if op != "MatMul" and len(layer.inputs) > 2 else None
    if bias is not None:
        array = constant(bias) if is_const(bias) else None
        if array is None or array.size not in (1, layer.outputs[0].shape[1]):
            return "its bias is computed at runtime or not per output channel"
    return None


def find_targets(groups: Sequence[Group], plan: PrunePlan, seed: int = 0) -> tuple[list[Target], list[LayerFit]]:
    """The layers reading the channels ``plan`` removes: those to refit, and those skipped."""
    layers: dict[int, tuple[ir.Node, list[np.ndarray]]] = {}
    removed_out: dict[int, list[tuple[Slot, np.ndarray]]] = {}
    for group in groups:
        if group.id not in plan.keep:
            continue
        removed = plan.removed(group)
        for slot in group.by_role(Role.CONSUMER):
            layer = consumer_layer(slot)
            layers.setdefault(id(layer), (layer, []))[1].append(slot.positions(removed, group.size))
        for slot in group.by_role(Role.ACTIVATION):
            removed_out.setdefault(id(slot.value), []).append((slot, slot.positions(removed, group.size)))
    targets: list[Target] = []
    skipped: list[LayerFit] = []
    graph = next(iter(layers.values()))[0].graph if layers else None
    for layer, parts in (layers[id(node)] for node in graph or () if id(node) in layers):  # in graph order
        removed_in = np.unique(np.concatenate(parts))
        reason = _unsupported(layer)
        if reason is not None:
            shape = layer.inputs[0].shape if layer.inputs[0] is not None else None
            width = shape[-1 if layer.op_type == "MatMul" else 1] if shape is not None else None
            inputs: tuple[int, int] | tuple[None, None] = (
                (width, width - len(removed_in)) if isinstance(width, int) else (None, None)
            )
            skipped.append(LayerFit(layer.name, layer.op_type, inputs, "skipped", note=reason))
            continue
        out = layer.outputs[0]
        assert out.shape is not None  # _unsupported checked it
        axis = len(out.shape) - 1 if layer.op_type == "MatMul" else 1
        cuts = [p for slot, p in removed_out.get(id(out), []) if slot.axis == axis]
        cut = np.unique(np.concatenate(cuts)) if cuts else np.empty(0, dtype=np.int64)
        targets.append(Target(layer, removed_in, cut, seed + len(targets)))
    return targets, skipped
