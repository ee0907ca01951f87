"""Per-channel activation statistics, streamed through a model runner (:mod:`.runner`).

The tensors a group's consumers read (its ACTIVATION slots) are exposed as extra outputs of
the model and reduced batch by batch to running per-channel sums: memory is O(channels), not
O(samples) (measured: bench/prune_bench.py --activation-memory). Used by the ``activation``
and ``apoz`` criteria, and for the channel means folded into the next layer's bias.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune.errors import DataError
from onnxprune.graphutils import named
from onnxprune.passes.cleanup import ShapeInference
from onnxprune.passes.prune.group import Group, Role, Slot
from onnxprune.passes.prune.runner import ModelRunner


def to_channels(values: np.ndarray, slot: Slot, size: int, reduce: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """Map per-index values along ``slot.axis`` to the group channels the slot covers.

    Returns ``(channels, per-channel values)``; the ``slot.block`` indices of one channel
    (features of a flattened channel) are summed, or averaged with ``reduce="mean"``.
    """
    hi = size if slot.hi is None else slot.hi
    channels = np.arange(slot.lo, hi)
    blocks = values[slot.positions(channels, size)].reshape(len(channels), slot.block)
    return channels, blocks.mean(axis=1) if reduce == "mean" else blocks.sum(axis=1)


# Bytes of extra outputs fetched per run call; more tensors are fetched in several
# calls per batch, so that a big model on a big batch does not hold all its activations at once.
FETCH_BUDGET = 256 * 1024 * 1024


@dataclasses.dataclass
class ChannelStats:
    """Per-channel statistics of the activation a group's consumers read."""

    mean_abs: np.ndarray  # E|x_c|
    mean: np.ndarray  # E x_c (what a removed channel contributed on average)
    nonzero: np.ndarray  # share of x_c != 0
    samples: int


class _Running:
    """Running sums along one axis of one tensor: memory is O(channels), not O(samples)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.abs: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.nonzero: np.ndarray | None = None
        self.count: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        rows = np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1)
        parts = (
            np.abs(rows).sum(axis=1, dtype=np.float64),
            rows.sum(axis=1, dtype=np.float64),
            np.count_nonzero(rows, axis=1).astype(np.float64),
            np.full(rows.shape[0], rows.shape[1], dtype=np.float64),
        )
        if self.abs is None:
            self.abs, self.sum, self.nonzero, self.count = parts
        else:
            for total, part in zip((self.abs, self.sum, self.nonzero, self.count), parts):
                assert total is not None  # all four are set together
                total += part


def hooked_slots(group: Group) -> list[Slot]:
    """The ACTIVATION slots the group's consumers read (all of them if none is read directly)."""
    consumers = {id(s.node) for s in group.by_role(Role.CONSUMER)}
    activations = group.by_role(Role.ACTIVATION)
    read = [s for s in activations if any(id(user) in consumers for user, _ in s.value.uses())]
    return read or activations


def collect_channel_stats(
    model: ir.Model,
    groups: Sequence[Group],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    runner: ModelRunner,
    progress: bool = False,
) -> dict[int, ChannelStats]:
    """Run the model (``runner``) over ``batches`` exposing the groups' activations as extra outputs.

    Only running per-channel sums are kept, so memory does not grow with the number of
    samples. The model's outputs are restored afterwards.
    """
    slots = {g.id: hooked_slots(g) for g in groups if g.prunable}
    values: dict[str, ir.Value] = {}
    running: dict[str, _Running] = {}
    for group_slots in slots.values():
        for slot in group_slots:
            values.setdefault(named(slot.value), slot.value)
            running.setdefault(named(slot.value), _Running(slot.axis))
    if not values:
        return {}
    inputs = runner.input_names(model)
    samples = 0
    with exposed(model, list(values.values())), runner.session(model) as sess:
        for feeds in tqdm(batches, desc="activations", unit="batch", disable=not progress, leave=False):
            feeds = {k: v for k, v in feeds.items() if k in inputs}
            batch = len(next(iter(feeds.values()))) if feeds else 1
            for chunk in budget_chunks(values.values(), functools.partial(batch_nbytes, batch=batch), FETCH_BUDGET):
                names = [named(v) for v in chunk]
                try:
                    arrays = sess.run(names, feeds)
                except Exception as exc:  # the runner's (ONNX Runtime's) own error types
                    raise DataError(f"calibration batch does not run: {str(exc).splitlines()[0]}") from None
                for name, array in zip(names, arrays):
                    running[name].update(array)
                del arrays
            samples += batch
    if samples == 0:
        raise DataError("calibration data is empty")
    sizes = {g.id: g.size for g in groups}
    return {gid: _group_stats(s, running, sizes[gid], samples) for gid, s in slots.items()}


def _group_stats(slots: list[Slot], running: dict[str, _Running], size: int, samples: int) -> ChannelStats:
    sums = {k: np.zeros(size) for k in ("abs", "sum", "nonzero", "count")}
    for slot in slots:
        r = running[named(slot.value)]
        for key in sums:
            channels, per = to_channels(getattr(r, key), slot, size)
            sums[key][channels] += per
    count = np.maximum(sums["count"], 1)
    return ChannelStats(sums["abs"] / count, sums["sum"] / count, sums["nonzero"] / count, samples)


@contextlib.contextmanager
def exposed(model: ir.Model, values: list[ir.Value]) -> Iterator[None]:
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


def batch_nbytes(value: ir.Value, batch: int) -> float:
    """Bytes of ``value`` for ``batch`` samples (other symbolic dims count 1, an unknown type 4 bytes)."""
    dims = [d if isinstance(d, int) else 1 for d in (value.shape or ())]
    itemsize = value.dtype.itemsize if value.dtype is not None else 4
    return math.prod(dims[1:]) * batch * itemsize


T = TypeVar("T")


def budget_chunks(items: Iterable[T], nbytes: Callable[[T], float], budget: int) -> list[list[T]]:
    """``items`` in order, cut into runs of at most ``budget`` bytes (an item over it goes alone)."""
    chunks: list[list[T]] = [[]]
    used = 0.0
    for item in items:
        size = nbytes(item)
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0.0
        chunks[-1].append(item)
        used += size
    return chunks
