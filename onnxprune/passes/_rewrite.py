"""Rewrite rules applied in place, in onnxscript's pattern / check / rewrite style.

onnxscript's rewriter (``RewriteRuleClassBase``) builds *new* nodes for every match, renames
values with ``NameFixPass`` and only tells how many rules fired. Our passes must keep node and
weight names (pruning plans, reports and users refer to them) and say what each rewrite did,
so a :class:`Rule` edits the matched nodes in place and returns one line describing the change,
and a declined match logs its reason at debug level.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import add_initializer, set_initializer, unique_name
from onnxprune.passes.base import Pass, PassResult

logger = logging.getLogger("onnxprune.passes")


class Rule(abc.ABC):
    """One rewrite: ``pattern`` finds the nodes, ``check`` says why not, ``rewrite`` edits."""

    name: str = ""

    @abc.abstractmethod
    def pattern(self, node: ir.Node) -> Any | None:
        """The match anchored at ``node`` (structure only: op types and wiring), or None."""

    def check(self, match: Any) -> str | None:
        """Why this match cannot be rewritten exactly, or None when it can."""
        return None

    @abc.abstractmethod
    def rewrite(self, match: Any) -> str:
        """Apply the rewrite in place; return one line saying what changed."""


class RulePass(Pass):
    """Applies its rules to every node of every graph until none applies any more."""

    rules: Sequence[Rule] = ()

    def call(self, model: ir.Model) -> PassResult:
        changes: list[str] = []
        declined: dict[str | None, str] = {}  # by node name (its output's when unnamed)
        progress = True
        while progress:  # a rewrite can expose another (Conv -> Mul -> Add folds twice)
            progress = False
            for graph in list(model.graphs()):
                for node in list(graph):
                    if node.graph is None:  # removed by an earlier rewrite in this sweep
                        continue
                    key, reasons = node.name or node.outputs[0].name, []
                    for rule in self.rules:
                        match = rule.pattern(node)
                        if match is None:
                            continue
                        reason = rule.check(match)
                        if reason is not None:
                            reasons.append(f"{rule.name}: {reason}")
                            continue
                        changes.append(rule.rewrite(match))
                        if reasons:  # say why the earlier (preferred) rules did not apply
                            logger.debug("%s: %s, as %s", self.name, changes[-1], "; ".join(reasons))
                        declined.pop(key, None)
                        progress = True
                        break
                    else:
                        if reasons:
                            declined[key] = "; ".join(reasons)
        for node_name, reason in declined.items():
            logger.debug("%s: left %s as it is (%s)", self.name, node_name, reason)
        return PassResult(model, bool(changes), changes)


def present_input(node: ir.Node, index: int) -> ir.Value:
    """Input ``index`` of ``node``, which the caller's match already found present."""
    value = node.inputs[index]
    assert value is not None, f"{node.op_type} '{node.name}': input {index} is missing"
    return value


def set_const_input(node: ir.Node, index: int, array: np.ndarray, name: str) -> None:
    """Give ``node`` the constant ``array`` as input ``index``.

    An initializer that only this node reads is updated in place (keeping its name); a shared
    or missing one gets a new initializer (named after ``name``), leaving the others intact.
    """
    value = node.inputs[index] if index < len(node.inputs) else None
    if (
        value is not None
        and value.is_initializer()
        and not value.is_graph_input()
        and not value.is_graph_output()
        and len(value.uses()) == 1
    ):
        set_initializer(value, array)
        return
    graph = node.graph
    assert graph is not None
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, add_initializer(graph, name, array))


def bypass(old: ir.Value, new: ir.Value) -> None:
    """Make every reader of ``old`` read ``new``; call it before removing ``old``'s producer.

    A graph output keeps its name (``new``, a node output, takes it over).
    """
    if old.is_graph_output():
        assert not new.is_graph_input() and not new.is_graph_output(), "would merge two graph values"
        name = old.name
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name, new.name = None, name
    else:
        old.replace_all_uses_with(new)


def remove(node: ir.Node) -> None:
    assert node.graph is not None
    node.graph.remove(node, safe=True)


def insert_node(
    anchor: ir.Node, op_type: str, inputs: Sequence[ir.Value], name: str, *, after: bool = True
) -> ir.Node:
    """A new default-domain node beside ``anchor`` (one output, uniquely named)."""
    graph = anchor.graph
    assert graph is not None
    node = ir.node(op_type, inputs, name=name)
    node.outputs[0].name = unique_name(graph, name)
    (graph.insert_after if after else graph.insert_before)(anchor, node)
    return node


def const_input(node: ir.Node, dtype: np.dtype, array: np.ndarray, name: str) -> ir.Value:
    """A new initializer of ``dtype`` in ``node``'s graph."""
    assert node.graph is not None
    return add_initializer(node.graph, name, np.asarray(array).astype(dtype))
