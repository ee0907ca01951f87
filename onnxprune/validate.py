"""Model validity checks: the ONNX checker, and what it does not catch before a pass runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx
import onnx_ir as ir

from onnxprune import _maptypes
from onnxprune._protocheck import check_acyclic
from onnxprune.errors import InvalidModelError, UnsupportedError, first_line
from onnxprune.graphutils import named

# Domains ONNX Runtime implements; any other domain must come with a model-local function.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training",
                 "com.microsoft.nchwc", "com.ms.internal.nhwc", "ai.onnx.contrib"}
CONTROL_FLOW_OPS = {"If", "Loop", "Scan"}
_INLINE_CHECK_LIMIT = 1024  # bytes: larger initializers are checked by type and shape only


def check_model(model: ir.Model, *, full: bool = False) -> None:
    """Run the ONNX checker; raise :class:`InvalidModelError` with its first line on failure.

    The checker sees the model without the data of its weights (see :func:`_weights_as_inputs`),
    so this costs no copy of them, works past protobuf's 2 GiB and does not look for external
    data files relative to the working directory (their data is checked when a model is
    loaded, see ``onnxprune.io``).
    """
    try:
        with _weights_as_inputs(model):
            proto = ir.to_proto(model)
        _maptypes.put_back(proto, model)
        onnx.checker.check_model(proto, full_check=full)
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"ONNX checker: {first_line(exc)}") from None
    except onnx.shape_inference.InferenceError as exc:
        raise InvalidModelError(f"ONNX shape inference: {first_line(exc)}") from None
    except (ir.serde.SerdeError, ValueError, TypeError) as exc:  # unserializable (damaged) model
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise InvalidModelError(f"model cannot be serialized for checking: {first_line(cause)}") from None


@contextlib.contextmanager
def _weights_as_inputs(model: ir.Model) -> Iterator[None]:
    """Temporarily turn the main graph's external or large initializers into graph inputs of
    the same type and shape (what onnx-ir's CheckerPass does for large ones; it leaves small
    external tensors in, and the checker then looks for their files in the working directory)."""
    graph = model.graph
    order = list(graph.initializers.values())
    moved = [v for v in order if v.const_value is None or isinstance(v.const_value, ir.ExternalTensor)
             or v.const_value.nbytes > _INLINE_CHECK_LIMIT]
    tensors = {id(v): v.const_value for v in moved}
    inputs = list(graph.inputs)
    try:
        for value in moved:
            if value.const_value is not None:
                value.shape = value.shape or value.const_value.shape  # type: ignore[assignment]  # an ir.Shape at runtime
                value.dtype = value.dtype or value.const_value.dtype
            graph.initializers.pop(named(value))
            value.const_value = None
            if value not in inputs:
                graph.inputs.append(value)
        yield
    finally:
        for value in moved:
            value.const_value = tensors[id(value)]
        graph.initializers.clear()
        for value in order:
            graph.initializers.add(value)
        graph.inputs.clear()
        graph.inputs.extend(inputs)


def check_structure(model: ir.Model, source: str = "model") -> None:
    """Problems the passes cannot work around: unknown domains, dangling inputs, cycles,
    and what the ONNX checker refuses (wrong input counts or attributes for an op...)."""
    local_functions = {f.domain for f in model.functions.values()}
    for graph in model.graphs():
        for node in graph:
            if node.domain not in KNOWN_DOMAINS and node.domain not in local_functions:
                raise InvalidModelError(
                    f"{source}: node '{node.name}' uses op '{node.op_type}' from unknown domain "
                    f"'{node.domain}' (no implementation in ONNX Runtime or in the model)"
                )
        _check_dangling(graph, source)
        check_acyclic(graph, source)
    newest = onnx.defs.onnx_opset_version()
    for domain in ("", "ai.onnx"):
        version = model.opset_imports.get(domain)
        if version is not None and version > newest:
            raise UnsupportedError(
                f"{source}: the model uses opset {version} of ai.onnx; onnx {onnx.__version__} "
                f"knows opsets up to {newest} (convert it to an older opset, or upgrade onnx and "
                "onnxruntime)"
            )
    try:
        check_model(model)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{source}: {exc}") from None


def _check_dangling(graph: ir.Graph, source: str) -> None:
    for node in graph:
        for value in node.inputs:
            if value is not None and not _defined(value):
                raise InvalidModelError(
                    f"{source}: input '{value.name}' of node '{node.name}' ({node.op_type}) "
                    "is produced by no node, graph input or initializer"
                )
    for value in graph.outputs:
        if not _defined(value):
            raise InvalidModelError(
                f"{source}: graph output '{value.name}' is produced by no node, input or initializer"
            )


def _defined(value: ir.Value) -> bool:
    # A subgraph may read values of its enclosing graphs: those have a producer or are
    # inputs/initializers of the graph that owns them.
    return value.producer() is not None or value.is_graph_input() or value.is_initializer()


def control_flow_nodes(model: ir.Model) -> list[ir.Node]:
    """If/Loop/Scan nodes anywhere in the model (their bodies are subgraphs)."""
    return [n for n in model.graph.all_nodes() if n.domain in ("", "ai.onnx") and n.op_type in CONTROL_FLOW_OPS]
