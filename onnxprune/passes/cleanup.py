"""Clean-up passes that reuse onnx-ir's and onnxscript's own implementations."""

from __future__ import annotations

import math

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer import constant_folding  # the public name of the module

from onnxprune import _maptypes
from onnxprune.passes.base import Pass, PassResult, WrappedPass


class MapSafeShapeInferencePass(common.ShapeInferencePass):
    """onnx-ir's shape inference, also on models with map-typed outputs (skl2onnx's ZipMap),
    whose inferred proto onnx-ir cannot read back: the map types are taken out of it first."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        seeded = _seed_ml_shapes(model)
        if not _maptypes.needs_restore(model):
            result = super().call(model)
            return ir.passes.PassResult(model, result.modified or seeded)
        proto = ir.to_proto(model)  # such models are small scikit-learn ones: no 2 GiB concern
        try:
            inferred = onnx.shape_inference.infer_shapes(
                proto, check_type=self.check_type, strict_mode=self.strict_mode, data_prop=self.data_prop)
        except Exception:  # noqa: BLE001 - like onnx-ir's pass: a failed inference changes nothing
            return ir.passes.PassResult(model, False)
        _maptypes.take_out(inferred, "model")
        found = {name: v for g in ir.serde.deserialize_model(inferred).graphs()
                 for name, v in ir.convenience.create_value_mapping(g).items()}
        modified = False
        for graph in model.graphs():
            for name, value in ir.convenience.create_value_mapping(graph).items():
                other = found.get(name)
                if other is None or other.type is None or (value.shape, value.type) == (other.shape, other.type):
                    continue
                value.type, value.shape = other.type, other.shape or value.shape
                modified = True
        return ir.passes.PassResult(model, modified or seeded)


# ai.onnx.ml ops that keep their input's shape, which ONNX has no shape inference for: without
# it nothing after a Scaler (skl2onnx's StandardScaler) has a shape, and the MLP behind it no
# channel count to prune.
_ML_SAME_SHAPE = {"Scaler": ir.DataType.FLOAT, "Normalizer": ir.DataType.FLOAT, "Binarizer": None, "Imputer": None}


def _seed_ml_shapes(model: ir.Model) -> bool:
    seeded = False
    for node in model.graph.all_nodes():
        if node.domain != "ai.onnx.ml" or node.op_type not in _ML_SAME_SHAPE or not node.inputs:
            continue
        source, out = node.inputs[0], node.outputs[0]
        if source is not None and source.shape is not None and out.shape is None:
            out.shape = ir.Shape(source.shape)
            out.dtype = _ML_SAME_SHAPE[node.op_type] or source.dtype  # type: ignore[assignment]  # None: left unknown
            seeded = True
    return seeded


class ShapeInference(WrappedPass):
    """Infer shapes and types of every value (ONNX shape inference, data propagation on)."""

    name = "shape-inference"

    def make(self) -> ir.passes.PassBase:
        return MapSafeShapeInferencePass(strict_mode=False, data_prop=True)


class FoldConstants(WrappedPass):
    """Evaluate nodes whose inputs are all constants and store the results as initializers."""

    name = "fold-constants"

    def make(self) -> ir.passes.PassBase:
        # Folded tensors up to 4M elements; larger folds would mostly duplicate weights.
        return constant_folding.FoldConstantsPass(
            shape_inference=False,
            input_size_limit=4 * 1024 * 1024,
            output_size_limit=4 * 1024 * 1024,
            should_fold=_folds_without_copying,
        )


SHARED_FOLD_LIMIT = 64  # elements: folding a node that reads a shared constant this big copies it
GROWTH_SLACK = 64  # elements a fold may add beyond what it reads (shape arithmetic stays foldable)
_SIZE_OPS = frozenset({"Shape", "Size"})  # their results are tiny whatever they read


def _folds_without_copying(node: ir.Node) -> bool | None:
    """No fold of a node reading a large constant that something else reads too: the result
    would be a second copy of the weight (silero's LSTM weights: Unsqueeze of a tensor kept
    for another consumer). None: onnxscript's own rules decide."""
    if node.domain == "" and node.op_type in _SIZE_OPS:
        return None
    sizes = [_const_size(v) for v in node.inputs if v is not None]
    made = [v.shape.numpy() for v in node.outputs if v.shape is not None and v.shape.is_static()]
    if len(made) == len(node.outputs) and sum(math.prod(s) for s in made) > sum(sizes) + GROWTH_SLACK:
        return False  # ConstantOfShape, Expand, Tile...: data the model makes at run time is not a weight
    for value in node.inputs:  # shared weights
        if value is None or len(value.uses()) < 2 and not value.is_graph_output():
            continue
        if _const_size(value) >= SHARED_FOLD_LIMIT:
            return False
    return None


def _const_size(value: ir.Value) -> int:
    if value.const_value is not None:
        return value.const_value.size
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        tensor = producer.attributes["value"].value
        return tensor.size if hasattr(tensor, "size") else 0
    return 0


class LiftConstants(WrappedPass):
    """Turn Constant nodes into initializers (they are data, not computation)."""

    name = "lift-constants"

    def make(self) -> ir.passes.PassBase:
        return common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)

    def call(self, model: ir.Model) -> PassResult:
        # The initializer is named after its tensor: a Constant whose tensor keeps another
        # name than its output (spox exports) would leave the readers dangling.
        for graph in model.graphs():
            for node in graph:
                if node.op_type == "Constant" and node.domain == "" and "value" in node.attributes:
                    tensor = node.attributes["value"].value
                    if isinstance(tensor, ir.TensorProtocol) and tensor.name != node.outputs[0].name:
                        tensor.name = node.outputs[0].name
        return super().call(model)


class RemoveUnused(WrappedPass):
    """Remove nodes, initializers, functions and opset imports nothing uses."""

    name = "remove-unused"

    def make(self) -> ir.passes.PassBase:
        return ir.passes.Sequential(
            common.RemoveUnusedNodesPass(),
            common.RemoveUnusedFunctionsPass(),  # type: ignore[no-untyped-call]  # onnx-ir leaves its __init__ unannotated
            common.RemoveUnusedOpsetsPass(),
        )


class TopologicalSort(WrappedPass):
    """Sort nodes topologically (the ONNX format requires it)."""

    name = "topological-sort"

    def make(self) -> ir.passes.PassBase:
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
    """onnx-ir's pass, minus two cases it gets wrong (1.1.0): ``y = Identity(x)`` where both
    are graph outputs (it renames ``x`` to ``y`` and one graph output disappears), and a
    subgraph output ``y`` copying a value of an enclosing graph (ONNX Runtime refuses a
    subgraph that returns an outer-scope value directly)."""

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        source = node.inputs[0] if len(node.inputs) == 1 else None
        if source is not None and node.outputs[0].is_graph_output():
            if source.is_graph_output() or _owner(source) is not node.graph:
                return False
        return super()._try_eliminate_identity_node(node)


def _owner(value: ir.Value) -> ir.Graph | ir.Function | None:
    """The graph that defines the value (its producer's, or the one it is an input or initializer of)."""
    producer = value.producer()
    return producer.graph if producer is not None else value.graph


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
