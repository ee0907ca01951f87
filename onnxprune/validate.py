"""Model validity checks: the ONNX checker, and what it does not catch before a pass runs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxprune.errors import InvalidModelError
from onnxprune.io import EXTERNAL_DATA_THRESHOLD, has_external_data, save_model, weights_nbytes

# Domains ONNX Runtime implements; any other domain must come with a model-local function.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training",
                 "com.microsoft.nchwc", "com.ms.internal.nhwc", "ai.onnx.contrib"}


def check_model(model: ir.Model, *, full: bool = False) -> None:
    """Run the ONNX checker; raise :class:`InvalidModelError` with its first line on failure.

    Large models are checked from a temporary file (protobuf bytes cannot exceed 2 GiB).
    """
    try:
        if has_external_data(model) or weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD:
            with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as tmp:
                path = save_model(model, Path(tmp) / "model.onnx", external_data=True)
                onnx.checker.check_model(str(path), full_check=full)
        else:
            onnx.checker.check_model(ir.to_proto(model), full_check=full)
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"ONNX checker: {_first_line(exc)}") from None
    except onnx.shape_inference.InferenceError as exc:
        raise InvalidModelError(f"ONNX shape inference: {_first_line(exc)}") from None


def check_structure(model: ir.Model, source: str = "model") -> None:
    """Problems the passes cannot work around: unknown domains, dangling inputs, cycles."""
    local_functions = {f.domain for f in model.functions.values()}
    for node in model.graph.all_nodes():
        if node.domain not in KNOWN_DOMAINS and node.domain not in local_functions:
            raise InvalidModelError(
                f"{source}: node '{node.name}' uses op '{node.op_type}' from unknown domain "
                f"'{node.domain}' (no implementation in ONNX Runtime or in the model)"
            )
    _check_cycles_and_dangling(model.graph, source)


def _check_cycles_and_dangling(graph: ir.Graph, source: str) -> None:
    state: dict[int, int] = {}  # node id -> 1 visiting, 2 done
    nodes = list(graph)
    for node in nodes:
        for value in node.inputs:
            if value is None:
                continue
            if value.producer() is None and not (value.is_graph_input() or value.is_initializer()):
                raise InvalidModelError(
                    f"{source}: input '{value.name}' of node '{node.name}' ({node.op_type}) "
                    "is produced by no node, graph input or initializer"
                )
    for root in nodes:  # iterative DFS over predecessors
        if state.get(id(root)) == 2:
            continue
        stack = [(root, iter(root.predecessors()))]
        state[id(root)] = 1
        while stack:
            node, preds = stack[-1]
            nxt = next(preds, None)
            if nxt is None:
                state[id(node)] = 2
                stack.pop()
            elif state.get(id(nxt)) == 1:
                raise InvalidModelError(
                    f"{source}: the graph has a cycle through node '{nxt.name}' ({nxt.op_type})"
                )
            elif state.get(id(nxt)) is None and nxt.graph is graph:
                state[id(nxt)] = 1
                stack.append((nxt, iter(nxt.predecessors())))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
