"""Channel importance criteria: a criterion maps a group to one score per channel.

As in Torch-Pruning, a criterion is a small callable ``criterion(group) -> scores`` (higher =
more important), not a configurable monolith. Data-driven criteria first collect statistics
over the whole model in :meth:`Criterion.prepare` (one streamed ONNX Runtime pass over the
data, :mod:`.activations`); weight criteria need nothing but the group.

Scores of different layers live on different scales (fan-in, BatchNorm scale, activation
range), so before a global ranking each group's scores are divided by the group's mean
(:func:`normalize`). The mean rather than the max: a single outlier channel would squash
every other score of its layer towards 0 under max-normalisation and make the whole layer
look unimportant; under the mean a normalised score of 0.3 reads "30 % of this layer's
average channel" in every layer. (Torch-Pruning's default normaliser is the mean, too.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune.errors import UsageError
from onnxprune.graphutils import attr, const_array
from onnxprune.passes.prune.activations import ChannelStats, collect_channel_stats, hooked_slots, to_channels
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.runner import ModelRunner, required

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm")


def normalize(scores: np.ndarray) -> np.ndarray:
    """``scores / mean(scores)``; a group whose scores are all zero stays all zero."""
    scores = np.asarray(scores, dtype=np.float64)
    mean = float(scores.mean()) if scores.size else 0.0
    return scores / mean if mean > 0 else np.zeros_like(scores)


def combine(size: int, parts: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Average the per-channel values of several slots; channels no slot covers are NaN."""
    total, count = np.zeros(size), np.zeros(size)
    for channels, values in parts:
        total[channels] += values
        count[channels] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def is_weight(slot: Slot) -> bool:
    """A producer slot holding a weight (not a bias): Conv/Gemm input 1, a MatMul operand."""
    node = slot.node
    if slot.bias:
        return False
    if node.op_type in WEIGHT_OPS:
        return len(node.inputs) > 1 and node.inputs[1] is slot.value
    return node.op_type == "MatMul"


def batchnorm_after(node: ir.Node) -> ir.Node | None:
    """The BatchNormalization that directly consumes ``node``'s output, if any."""
    for user, index in node.outputs[0].uses():
        if user.op_type == "BatchNormalization" and user.domain == "" and index == 0:
            return user
    return None


def batchnorm_scale(bn: ir.Node) -> np.ndarray | None:
    """|γ| / √(σ² + ε): the per-channel factor BatchNorm applies to its input."""
    gamma, var = const_array(bn.inputs[1]), const_array(bn.inputs[4])
    if gamma is None or var is None:
        return None
    scale: np.ndarray = np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + attr(bn, "epsilon", 1e-5))
    return scale


class Criterion:
    """Scores the channels of a group; ``notes`` says, by group id, where it fell back."""

    name = ""
    needs_data = False

    def __init__(self) -> None:
        self.notes: dict[int, str] = {}

    def prepare(self, model: ir.Model, groups: Sequence[Group]) -> None:
        """Called once with all the groups before any scoring (data-driven criteria collect here)."""

    def __call__(self, group: Group) -> np.ndarray:
        raise NotImplementedError


class Magnitude(Criterion):
    """Norm of each channel's *effective* producer weights, averaged over the group's producers.

    score(c) = mean over producers p of ‖s_p[c] · W_p[c, ...]‖  (p-norm, p = 1 or 2)

    where ``s_p[c] = |γ_c| / √(σ²_c + ε)`` when a BatchNormalization directly follows the
    producer (else 1): the weights the deployed, BN-folded model will have. Raw weights of a
    Conv followed by BN have an arbitrary scale (BN undoes it), so without ``s`` the ranking
    would depend on whether BN was folded before pruning; with it, it does not.
    A residual group has several producers (one per branch); a Split group may have
    producers covering only part of the channels: each channel averages those covering it.
    """

    def __init__(self, p: int) -> None:
        super().__init__()
        self.p = p
        self.name = f"l{p}"

    def __call__(self, group: Group) -> np.ndarray:
        parts = []
        for slot in group.by_role(Role.PRODUCER):
            weight = const_array(slot.value) if is_weight(slot) else None
            if weight is None:
                continue
            # Reduce in place of a float64 copy: one float32 temporary, float64 accumulation
            # (the copies put a large external-data model's peak memory well above its size).
            axes = tuple(i for i in range(weight.ndim) if i != slot.axis)
            magnitude = np.abs(weight) if self.p == 1 else np.square(weight)
            powers = np.asarray(np.sum(magnitude, axis=axes, dtype=np.float64))  # an array whatever the axes
            bn = batchnorm_after(slot.node)
            scale = batchnorm_scale(bn) if bn is not None else None
            if scale is not None and scale.shape == powers.shape:
                powers = powers * scale**self.p
            channels, sums = to_channels(powers, slot, group.size)
            parts.append((channels, sums ** (1.0 / self.p)))
        scores = combine(group.size, parts)
        if np.isnan(scores).any():
            # Channels without a constant producer weight (should not happen for a prunable
            # group): rank them as average so that they are neither kept nor dropped first.
            self.notes[group.id] = "some channels have no constant producer weight"
            fill = np.nanmean(scores) if not np.isnan(scores).all() else 1.0
            scores = np.where(np.isnan(scores), fill, scores)
        return scores


class BatchNormScale(Criterion):
    """|γ| of the BatchNormalizations carrying the group's channels (network slimming).

    score(c) = mean over the group's BNs of |γ_c|. Groups without BatchNorm on every channel
    fall back to the l1 criterion, with a note.
    """

    name = "bn"

    def __init__(self) -> None:
        super().__init__()
        self.fallback = Magnitude(1)

    def prepare(self, model: ir.Model, groups: Sequence[Group]) -> None:
        # On a model whose BatchNorms were folded away, every group would silently be scored
        # by l1 under the name "bn": refuse instead.
        if groups and not any(n.op_type == "BatchNormalization" for n in model.graph.all_nodes()):
            raise UsageError("criterion 'bn' needs BatchNormalization layers and this model has none "
                             "(folded into the convolutions by optimize?): prune the model before "
                             "optimizing it, or choose --criterion l1")

    def __call__(self, group: Group) -> np.ndarray:
        parts = []
        for slot in group.by_role(Role.PARAM):
            node = slot.node
            if node.op_type == "BatchNormalization" and node.inputs[1] is slot.value:
                gamma = const_array(slot.value)
                if gamma is not None:
                    parts.append(to_channels(np.abs(gamma.astype(np.float64)), slot, group.size, "mean"))
        scores = combine(group.size, parts)
        if not parts or np.isnan(scores).any():
            self.notes[group.id] = "no BatchNorm on every channel: scored by l1"
            return self.fallback(group)
        return scores


class Activation(Criterion):
    """Statistics of each channel's activations on sample data (ONNX Runtime, streamed).

    ``statistic="mean_abs"``: E|x_c| (channels that stay small contribute little);
    ``statistic="nonzero"``: share of non-zero values, 1 − APoZ (Hu et al. 2016: channels
    that a ReLU almost always zeroes are idle). Both are measured on the tensor the group's
    consumers read. :attr:`stats` also holds the channel means, which the rewrite can fold
    into consumer biases for the removed channels.
    """

    needs_data = True

    def __init__(
        self,
        data: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None,
        statistic: str = "mean_abs",
        progress: bool = False,
        runner: ModelRunner | None = None,
    ) -> None:
        super().__init__()
        self.runner = runner
        if statistic not in ("mean_abs", "nonzero"):
            raise UsageError(f"unknown activation statistic '{statistic}' (mean_abs, nonzero)")
        self.data = data
        self.statistic = statistic
        self.name = "activation" if statistic == "mean_abs" else "apoz"
        self.progress = progress
        self.stats: dict[int, ChannelStats] = {}

    def prepare(self, model: ir.Model, groups: Sequence[Group]) -> None:
        if self.data is None:
            raise UsageError(f"criterion '{self.name}' needs calibration data (--calib)")
        self.stats = collect_channel_stats(model, groups, self.data(), progress=self.progress,
                                           runner=required(self.runner, f"criterion '{self.name}'"))

    def __call__(self, group: Group) -> np.ndarray:
        stats = self.stats.get(group.id)
        if stats is None:
            raise UsageError(f"criterion '{self.name}': no activation statistics for group '{group.name}'")
        return stats.mean_abs if self.statistic == "mean_abs" else stats.nonzero


CRITERIA: dict[str, str] = {
    "l1": "L1 norm of each channel's producer weights (BN-aware)",
    "l2": "L2 norm of each channel's producer weights (BN-aware)",
    "bn": "|BatchNorm scale γ| of each channel (l1 where there is no BN)",
    "activation": "mean |activation| of each channel on calibration data",
    "apoz": "share of non-zero activations of each channel on calibration data (1 - APoZ)",
    "energy": "output energy each channel carries through its consumers' weights, on calibration data",
    "thinet": "greedy selection of the channels whose removal the consumers' outputs best absorb (ThiNet)",
    "taylor": "first-order Taylor / Fisher importance from gradients on calibration data (labels if given; "
              "needs onnxprune[distill])",
}


def get_criterion(
    name: str,
    data: Callable[[], Iterable[Mapping[str, np.ndarray]]] | None = None,
    progress: bool = False,
    runner: ModelRunner | None = None,
) -> Criterion:
    """The criterion called ``name``; ``data`` yields calibration batches and ``runner`` runs
    the model on them (data-driven ones)."""
    if name == "l1":
        return Magnitude(1)
    if name == "l2":
        return Magnitude(2)
    if name == "bn":
        return BatchNormScale()
    if name == "activation":
        return Activation(data, "mean_abs", progress, runner)
    if name == "apoz":
        return Activation(data, "nonzero", progress, runner)
    if name == "taylor":  # gradients come from the API layer (onnxprune.api.taylor), not a pass
        raise UsageError("criterion 'taylor' is computed by onnxprune.prune(): it gives PrunePass a Taylor criterion")
    raise UsageError(f"unknown criterion '{name}' (available: {', '.join(CRITERIA)})")


__all__ = [
    "CRITERIA", "ChannelStats", "Criterion", "collect_channel_stats", "get_criterion", "hooked_slots", "normalize",
]
