"""Data-aware channel selection: what the consumers lose when a channel is removed.

A consumer layer computes ``y = M x + b`` over its input rows (:mod:`.refit`). Removing a set
``T`` of its input channels (the mean folded into the bias, as the pruning does) changes its
output by ``M_T (x_T − x̄_T)``, whose expected energy, relative to the output's variance, is

    E(T) = tr(M_T Cxx_TT M_Tᵀ) / tr(Cyy) = 1ᵀ G_TT 1,   G[c, c'] = Σ_{i∈c, j∈c'} (MᵀM)_ij Cxx_ij / tr(Cyy)

(``i ∈ c``: the columns that read channel ``c``: its kernel window, its block of features).
``G`` is summed over the group's consumers. Two criteria use it:

- ``energy``: ``√G[c, c]``, the output energy a channel carries through the consumer's
  weights (its activation variance weighted by the consumer's weight norms, correlations
  with the other channels ignored);
- ``thinet``: ThiNet's greedy selection (Luo et al. 2017), the sparse subset selection the
  seed's L1 regularisation stands for (He et al. 2017 solve the same problem by LASSO):
  channels are removed one at a time, each time the one whose removal adds the least to
  ``E(T)``, so that channels that cancel or duplicate each other go together. Each channel's
  score is the increase it caused, made non-decreasing along the removal order (the planner
  removes the lowest scores first, in that order).

Statistics: one streamed pass over the calibration data, ThiNet's sampling: at each sampled
output position one output channel ``o`` is drawn, and the per-channel contributions
``z_c = Σ_{i∈c} M[o, i] (x_i − x̄_i)`` are accumulated into ``Σ z zᵀ`` ([U, U], U the layer's
input channels; ``x̄`` the batch's column means): O(rows · D + rows · U²) per batch, where the
full ``Cxx`` would cost O(rows · D²) (D = U × kernel size: 4320 for a 3×3 Conv reading 480
channels). Groups without a consumer that can be read as ``y = M x + b`` (grouped Conv, an op
that is not Conv/Gemm/MatMul) are scored by their activations' mean |x|, with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune.errors import UsageError
from onnxprune.graphutils import attr
from onnxprune.passes.prune.activations import collect_channel_stats
from onnxprune.passes.prune.fold import consumer_layer
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.importance import Criterion
from onnxprune.passes.prune.lstsq import conv_rows
from onnxprune.passes.prune.reconstruct import _stream as stream
from onnxprune.passes.prune.refit import Target, _unsupported
from onnxprune.passes.prune.rules import constant, is_const
from onnxprune.passes.prune.runner import ModelRunner, required

Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


# Output positions sampled per batch and consumer layer.
ROWS = 4096


class _Probe:
    """Accumulates ``Σ z zᵀ`` for one consumer layer (the interface :func:`.reconstruct._stream` feeds)."""

    def __init__(self, layer: ir.Node, seed: int) -> None:
        none = np.empty(0, dtype=np.int64)
        self.target = Target(layer, none, none, seed)  # the layer read as y = M x + b
        self.layer, self.x_value, self.y_value = layer, self.target.x_value, layer.outputs[0]
        self.matrix = self.target.sliced.T  # M [O, D]
        self.k = math.prod(self.target.kernel)
        self.units = self.matrix.shape[1] // self.k
        self.gram = np.zeros((self.units, self.units))
        self.rows, self.spread = 0, 0.0  # Σ_o Var(y_o) · rows
        self.rng = np.random.default_rng(seed)

    def update(self, x: np.ndarray, y: np.ndarray, pruned_input: bool = False, first: int = 0) -> None:
        t = self.target
        if t.op == "Conv":
            index = self.rng.choice(y.shape[0] * math.prod(y.shape[2:]), min(ROWS, y.shape[0] * math.prod(y.shape[2:])),
                                    replace=False)
            rows = conv_rows(self.layer, t.kernel, x, y.shape, index)
            outs = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[index]
        else:
            rows, outs = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
            if len(rows) > ROWS:
                index = self.rng.choice(len(rows), ROWS, replace=False)
                rows, outs = rows[index], outs[index]
        rows = rows.astype(np.float64)
        rows -= rows.mean(axis=0)
        pick = self.rng.integers(0, self.matrix.shape[0], len(rows))
        z = (rows * self.matrix[pick]).reshape(len(rows), self.units, self.k).sum(axis=2)
        self.gram += z.T @ z * self.matrix.shape[0]  # one output drawn of O: Σ_o ≈ O · E_o
        self.spread += float(np.var(outs.astype(np.float64), axis=0).sum()) * len(rows)
        self.rows += len(rows)

    def result(self) -> np.ndarray:
        """``G`` over the layer's input channels/features, relative to its output variance."""
        return self.gram / self.spread if self.spread > 0 else self.gram / max(self.rows, 1)


class _TransposedProbe:
    """``Σ z zᵀ`` for a ConvTranspose consumer (no im2col form: :mod:`.refit` cannot refit it).
    Each input pixel ``x_p`` writes the block ``M x_p`` (``M`` [O·kernel, C]) of the output;
    with strides of the kernel's size (a decoder's 2×2/2 upsampling) the blocks do not overlap
    and ``E(T)`` is exact, else the overlaps' cross terms are left out."""

    def __init__(self, layer: ir.Node, weight: np.ndarray, seed: int) -> None:
        x_value = layer.inputs[0]
        assert x_value is not None, f"ConvTranspose '{layer.name}' has no input"  # a consumer reads it
        self.layer, self.x_value, self.y_value = layer, x_value, layer.outputs[0]
        self.matrix = weight.reshape(weight.shape[0], -1).T.astype(np.float64)  # [O·k, C]
        self.k = math.prod(weight.shape[2:])
        self.units = weight.shape[0]
        self.gram = np.zeros((self.units, self.units))
        self.rows, self.spread = 0, 0.0
        self.rng = np.random.default_rng(seed)

    def update(self, x: np.ndarray, y: np.ndarray, pruned_input: bool = False, first: int = 0) -> None:
        rows = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
        if len(rows) > ROWS:
            rows = rows[self.rng.choice(len(rows), ROWS, replace=False)]
        rows = rows.astype(np.float64)
        rows -= rows.mean(axis=0)
        z = rows * self.matrix[self.rng.integers(0, self.matrix.shape[0], len(rows))]
        self.gram += z.T @ z * self.matrix.shape[0]
        outs = np.moveaxis(y, 1, -1).reshape(-1, y.shape[1]).astype(np.float64)
        self.spread += float(np.var(outs, axis=0).sum()) * self.k * len(rows)  # a block: k output pixels
        self.rows += len(rows)

    def result(self) -> np.ndarray:
        return self.gram / self.spread if self.spread > 0 else self.gram / max(self.rows, 1)


def _transposed(layer: ir.Node | None, seed: int) -> _TransposedProbe | None:
    """A probe for an ungrouped ConvTranspose with a constant weight, else None."""
    if layer is None or layer.op_type != "ConvTranspose" or attr(layer, "group", 1) != 1:
        return None
    weight = layer.inputs[1] if len(layer.inputs) > 1 else None
    array = constant(weight) if weight is not None and is_const(weight) else None
    return _TransposedProbe(layer, array, seed) if array is not None and array.ndim >= 3 else None


def greedy_scores(gram: np.ndarray) -> np.ndarray:
    """ThiNet's greedy removal on ``E(T) = 1ᵀ G_TT 1``: each channel's added energy, made
    non-decreasing along the removal order (ties broken by that order)."""
    size = len(gram)
    left = np.ones(size, dtype=bool)
    cross = np.zeros(size)  # Σ_{t∈T} G[c, t]
    diag = np.diag(gram).copy()
    order, steps = [], []
    for _ in range(size):
        cost = np.where(left, 2 * cross + diag, np.inf)
        c = int(np.argmin(cost))
        order.append(c)
        steps.append(max(cost[c], 0.0))
        left[c] = False
        cross += gram[:, c]
    scores = np.empty(size)
    climbing = np.maximum.accumulate(np.sqrt(steps))
    scores[order] = climbing + 1e-12 * np.arange(1, size + 1) * (climbing.max() + 1e-30)
    return scores


class ConsumerEnergy(Criterion):
    """``energy`` or ``thinet`` (see the module docstring); needs calibration data."""

    needs_data = True

    def __init__(self, data: Batches | None, greedy: bool, progress: bool = False,
                 runner: ModelRunner | None = None) -> None:
        super().__init__()
        self.data, self.greedy, self.progress, self.runner = data, greedy, progress, runner
        self.name = "thinet" if greedy else "energy"
        self.grams: dict[int, np.ndarray] = {}
        self.fallback: dict[int, np.ndarray] = {}

    def prepare(self, model: ir.Model, groups: Sequence[Group]) -> None:
        if self.data is None:
            raise UsageError(f"criterion '{self.name}' needs calibration data (--calib)")
        runner = required(self.runner, f"criterion '{self.name}'")
        self.grams.clear()
        self.fallback.clear()
        targets: dict[int, _Probe | _TransposedProbe] = {}
        reads: dict[int, list[tuple[Slot, _Probe | _TransposedProbe]]] = {}
        for group in groups:
            for slot in group.by_role(Role.CONSUMER):
                layer = consumer_layer(slot)
                if slot.groups != 1:
                    continue
                if id(layer) not in targets:
                    probe = _transposed(layer, len(targets)) if _unsupported(layer) is not None else \
                        _Probe(layer, seed=len(targets))
                    if probe is None:
                        continue
                    targets[id(layer)] = probe
                reads.setdefault(group.id, []).append((slot, targets[id(layer)]))
        order = {id(n): i for i, n in enumerate(model.graph)}
        listed = sorted(targets.values(), key=lambda t: order.get(id(t.layer), 0))
        if listed:
            stream(listed, self.data, model, None, self.progress and f"scores ({self.name})", runner)
        for group in groups:
            parts = reads.get(group.id)
            if not parts:
                continue
            total = np.zeros((group.size, group.size))
            for slot, probe in parts:
                mapping = np.zeros((probe.units, group.size))
                for c in range(group.size):
                    mapping[slot.positions(np.array([c]), group.size), c] = 1.0
                total += mapping.T @ probe.result() @ mapping
            self.grams[group.id] = total
        rest = [g for g in groups if g.id not in self.grams]
        if rest:
            stats = collect_channel_stats(model, rest, self.data(), runner=runner, progress=self.progress)
            for g in rest:
                self.fallback[g.id] = stats[g.id].mean_abs

    def __call__(self, group: Group) -> np.ndarray:
        gram = self.grams.get(group.id)
        if gram is None:
            if group.id not in self.fallback:
                raise UsageError(f"criterion '{self.name}': no statistics for group '{group.name}'")
            self.notes[group.id] = "no consumer read as a linear layer: scored by mean |activation|"
            return self.fallback[group.id]
        if not self.greedy:
            return np.sqrt(np.maximum(np.diag(gram), 0.0))
        return greedy_scores(gram)
