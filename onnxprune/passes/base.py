"""What every onnxprune pass shares.

A pass is an onnx-ir pass (``call(model) -> PassResult``). Ours return
:class:`PassResult`, which adds ``changes``: one human-readable line per rewrite, so that
the pipeline report says *what* changed and not only *whether*.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from onnxprune.graphutils import node_count


@dataclasses.dataclass
class PassResult(ir.passes.PassResult):
    changes: list[str] = dataclasses.field(default_factory=list)


class Pass(ir.passes.InPlacePass):
    """An in-place pass with a CLI name and a one-line summary (the class docstring's first line).

    ``exact`` passes must leave the model's outputs numerically equal; the test-suite and
    ``--verify`` hold them to that.
    """

    name: str = ""
    exact: bool = True

    @classmethod
    def summary(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.name


class WrappedPass(Pass):
    """Adapts an existing onnx-ir/onnxscript pass (we reuse them rather than rewrite them)."""

    def make(self) -> ir.passes.PassBase:
        raise NotImplementedError

    def call(self, model: ir.Model) -> PassResult:
        before = node_count(model)
        result = self.make()(model)
        after = node_count(result.model)
        changes = [f"{before - after} nodes removed"] if before != after else []
        return PassResult(result.model, result.modified, changes)
