"""The data model of structured pruning (after Torch-Pruning's group = root + coupled dims).

A *group* is a set of channel dimensions that must lose the same channels together: the
output channels of one or more producers (Conv, ConvTranspose, Gemm, MatMul with constant
weights), everything that carries them forward (BatchNorm, activations, per-channel
constants, residual Adds that tie several producers), and the input channels of the
consumers that read them (possibly at an offset, after a Concat, or as blocks of features,
after a Flatten).

Every coupled dimension is a :class:`Slot`: "channel ``c`` of the group lives at indices
``offset + c*block ... offset + (c+1)*block - 1`` along ``axis`` of ``value``", for the group
channels ``lo <= c < hi`` it covers (a Split branch covers only part of the group).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import onnx_ir as ir


class Role(enum.Enum):
    PRODUCER = "producer"  # a weight/bias whose slices *create* the channels (Conv W axis 0)
    PARAM = "param"  # a per-channel parameter carried along (BN scale, PRelu slope, Mul const)
    CONSUMER = "consumer"  # a weight that *reads* the channels (next Conv W axis 1)
    ACTIVATION = "activation"  # an intermediate tensor carrying the channels (no data to slice)


@dataclasses.dataclass(eq=False)
class Slot:
    role: Role
    node: ir.Node  # the node using/producing ``value``
    value: ir.Value  # the initializer to slice (or the activation, for Role.ACTIVATION)
    axis: int
    offset: int = 0
    block: int = 1
    lo: int = 0  # first group channel this slot covers
    hi: int | None = None  # one past the last (None: to the end of the group)

    def indices(self, channels: np.ndarray, group_size: int) -> np.ndarray:
        """Tensor indices along ``axis`` for the given group channels (those this slot covers)."""
        hi = group_size if self.hi is None else self.hi
        covered = channels[(channels >= self.lo) & (channels < hi)] - self.lo
        starts = self.offset + covered * self.block
        return (starts[:, None] + np.arange(self.block)[None, :]).reshape(-1)


@dataclasses.dataclass(eq=False)
class Group:
    """Channels that are pruned together. ``declined`` says why a group cannot be pruned."""

    id: int
    size: int  # number of channels
    slots: list[Slot] = dataclasses.field(default_factory=list)
    declined: str | None = None

    @property
    def name(self) -> str:
        """A readable name: the first producer node (the group's root)."""
        root = self.root
        return root.name if root is not None and root.name else f"group{self.id}"

    @property
    def root(self) -> ir.Node | None:
        producers = self.by_role(Role.PRODUCER)
        return producers[0].node if producers else None

    @property
    def prunable(self) -> bool:
        return self.declined is None

    def by_role(self, role: Role) -> list[Slot]:
        return [s for s in self.slots if s.role is role]

    def nodes(self) -> list[ir.Node]:
        seen: dict[int, ir.Node] = {}
        for slot in self.slots:
            seen.setdefault(id(slot.node), slot.node)
        return list(seen.values())


@dataclasses.dataclass
class PrunePlan:
    """Which channels each group keeps (sorted indices), by group id; absent = keep all."""

    keep: dict[int, np.ndarray]

    def removed(self, group: Group) -> np.ndarray:
        kept = self.keep.get(group.id)
        if kept is None:
            return np.array([], dtype=np.int64)
        return np.setdiff1d(np.arange(group.size), kept)
