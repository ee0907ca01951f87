"""The data model of structured pruning (after Torch-Pruning's group = root + coupled dims).

A *group* is a set of channel dimensions that must lose the same channels together: the
output channels of one or more producers (Conv, ConvTranspose, Gemm, MatMul with constant
weights), everything that carries them forward (BatchNorm, activations, per-channel
constants, residual Adds that tie several producers), and the input channels of the
consumers that read them (possibly at an offset, after a Concat, or as blocks of features,
after a Flatten).

Every coupled dimension is a :class:`Slot`: "channel ``c`` of the group lives at indices
``offset + (c-lo)*block ... offset + (c-lo+1)*block - 1`` along ``axis`` of ``value``", for
the group channels ``lo <= c < hi`` it covers (a Split branch covers only part of the group).

A constant slot's ``value`` is what ``node`` reads: usually an initializer, sometimes the
output of an Identity sharing one (read it with ``rules.constant``); a MatMul weight the
exporter wrote as ``Transpose(W)`` is the slot of ``W`` with ``node`` the Transpose.

Grouped convolutions add one constraint: a Conv with ``groups=g`` (1 < g < C) reads (and
writes) its channels in ``g`` contiguous divisions, and its weight stays a dense tensor only
if every division keeps the same number of channels. Such groups carry ``divisions=g`` and
the planner must remove equally many channels from each division (:meth:`Group.division_counts`).
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
    bias: bool = False  # a producer's bias (Conv B, Gemm C), as opposed to its weight
    # A grouped Conv weight read along axis 1 (CONSUMER): its rows fall in ``groups`` blocks,
    # block j reading only division j of the input channels. Axis 1 then holds the column
    # *within* the division: ``indices`` gives those columns, ``positions`` the input channels.
    groups: int = 1

    def positions(self, channels: np.ndarray, group_size: int) -> np.ndarray:
        """Indices along ``axis`` of the (ungrouped) tensor for the group channels covered."""
        hi = group_size if self.hi is None else self.hi
        channels = np.asarray(channels, dtype=np.int64)
        covered = channels[(channels >= self.lo) & (channels < hi)] - self.lo
        starts = self.offset + covered * self.block
        return (starts[:, None] + np.arange(self.block)[None, :]).reshape(-1)

    def indices(self, channels: np.ndarray, group_size: int) -> np.ndarray:
        """Tensor indices along ``axis`` for the given group channels (those this slot covers).

        For a grouped Conv weight (``groups > 1``) these are columns within each division:
        equal counts per division remove ``len(indices) / groups`` columns from every row block.
        """
        positions = self.positions(channels, group_size)
        if self.groups == 1:
            return positions
        hi = group_size if self.hi is None else self.hi
        return positions % ((hi - self.lo) * self.block // self.groups)

    def removed_count(self, channels: np.ndarray, group_size: int) -> int:
        """How many entries this slot's tensor loses along ``axis`` when ``channels`` go."""
        return len(self.positions(channels, group_size)) // self.groups


@dataclasses.dataclass(eq=False)
class Group:
    """Channels that are pruned together. ``declined`` says why a group cannot be pruned."""

    id: int
    size: int  # number of channels
    slots: list[Slot] = dataclasses.field(default_factory=list)
    declined: str | None = None
    divisions: int = 1  # grouped Conv: every one of these equal parts keeps as many channels
    origin: ir.Node | None = None  # the layer whose output channels started the group

    def division_counts(self, kept: np.ndarray) -> np.ndarray:
        """Kept channels per division (all equal in a valid plan)."""
        return np.bincount(np.asarray(kept) // (self.size // self.divisions), minlength=self.divisions)

    @property
    def name(self) -> str:
        """A readable name: the layer that roots the group (else its first producer node)."""
        root = self.origin or self.root
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


@dataclasses.dataclass
class PrunePlan:
    """Which channels each group keeps (sorted indices), by group id; absent = keep all."""

    keep: dict[int, np.ndarray]

    def removed(self, group: Group) -> np.ndarray:
        kept = self.keep.get(group.id)
        if kept is None:
            return np.array([], dtype=np.int64)
        return np.setdiff1d(np.arange(group.size), kept)
