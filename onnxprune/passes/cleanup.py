"""Clean-up passes that reuse onnx-ir's and onnxscript's own implementations."""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import _constant_folding

from onnxprune.passes.base import Pass, PassResult, WrappedPass


class ShapeInference(WrappedPass):
    """Infer shapes and types of every value (ONNX shape inference, data propagation on)."""

    name = "shape-inference"

    def make(self):
        return common.ShapeInferencePass(strict_mode=False, data_prop=True)


class FoldConstants(WrappedPass):
    """Evaluate nodes whose inputs are all constants and store the results as initializers."""

    name = "fold-constants"

    def make(self):
        # Folded tensors up to 4M elements; larger folds would mostly duplicate weights.
        return _constant_folding.FoldConstantsPass(
            shape_inference=False,
            input_size_limit=4 * 1024 * 1024,
            output_size_limit=4 * 1024 * 1024,
        )


class LiftConstants(WrappedPass):
    """Turn Constant nodes into initializers (they are data, not computation)."""

    name = "lift-constants"

    def make(self):
        return common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)


class RemoveUnused(WrappedPass):
    """Remove nodes, initializers, functions and opset imports nothing uses."""

    name = "remove-unused"

    def make(self):
        return ir.passes.Sequential(
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedFunctionsPass(),
            common.RemoveUnusedOpsetsPass(),
        )


class TopologicalSort(WrappedPass):
    """Sort nodes topologically (the ONNX format requires it)."""

    name = "topological-sort"

    def make(self):
        return common.TopologicalSortPass()


class EliminateIdentity(Pass):
    """Remove Identity nodes and inference-mode Dropout (consumers read the input instead)."""

    name = "eliminate-identity"

    def call(self, model: ir.Model) -> PassResult:
        changes = []
        for graph in model.graphs():
            for node in list(graph):
                if node.domain == "" and node.op_type == "Dropout" and _dropout_removable(node):
                    node.op_type = "Identity"
                    node.attributes.clear()
                    node.resize_inputs(1)
                    node.resize_outputs(1)
                    changes.append(f"{node.name}: Dropout is an identity at inference")
        before = _count_identities(model)
        _IdentityElimination()(model)
        if removed := before - _count_identities(model):
            changes.append(f"{removed} Identity nodes removed")
        return PassResult(model, bool(changes), changes)


class _IdentityElimination(common.IdentityEliminationPass):
    """onnx-ir's pass, minus one case it gets wrong (1.1.0): ``y = Identity(x)`` where both
    are graph outputs; it renames ``x`` to ``y`` and one graph output disappears."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        if source is not None and source.is_graph_output() and node.outputs[0].is_graph_output():
            return False
        return super()._try_eliminate_identity_node(node)


def _count_identities(model: ir.Model) -> int:
    return sum(n.op_type == "Identity" and n.domain == "" for g in model.graphs() for n in g)


def _dropout_removable(node: ir.Node) -> bool:
    """Inference-mode Dropout whose mask output nobody reads."""
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return False
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return True  # training_mode defaults to False
    value = node.inputs[2].const_value
    return value is not None and not bool(value.numpy())
