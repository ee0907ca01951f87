"""Checks on a parsed ModelProto before onnx-ir sees it, and on the graph right after.

onnx-ir deserializes leniently (it keeps a graph with a cycle, binds a name produced twice
to one of its producers, and decodes tensor data only when asked), so a malformed file
would fail later, inside a pass, with an unrelated error. These checks are cheap (names,
counts and lengths; no tensor data is decoded) and turn such files into one clear line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxprune.errors import InvalidModelError

_T = onnx.TensorProto
# Where a tensor without raw_data keeps its elements, and how many numbers per element.
_TYPED_FIELDS: dict[int, tuple[str, int]] = {
    _T.FLOAT: ("float_data", 1), _T.COMPLEX64: ("float_data", 2),
    _T.DOUBLE: ("double_data", 1), _T.COMPLEX128: ("double_data", 2),
    _T.INT64: ("int64_data", 1), _T.UINT32: ("uint64_data", 1), _T.UINT64: ("uint64_data", 1),
    _T.STRING: ("string_data", 1),
    **{t: ("int32_data", 1) for t in (_T.INT32, _T.INT16, _T.INT8, _T.UINT16, _T.UINT8, _T.BOOL,
                                      _T.FLOAT16, _T.BFLOAT16)},
}
_KNOWN_TYPES = {t.value for t in ir.DataType} - {0}
_ATTRIBUTE_TYPES = set(onnx.AttributeProto.AttributeType.values()) - {onnx.AttributeProto.UNDEFINED}

# Files often mistaken for ONNX models: (offset, magic bytes, what the file probably is).
_OTHER_FORMATS = (
    (0, b"PK\x03\x04", "this is a zip archive: a PyTorch .pt/.pth checkpoint or a .npz?"),
    *((0, bytes([0x80, protocol]), "this is a Python pickle (a PyTorch/scikit-learn checkpoint?)")
      for protocol in (2, 3, 4, 5)),
    (4, b"ORTM", "this is an ONNX Runtime .ort model; use the .onnx it was converted from"),
    (4, b"TFL3", "this is a TensorFlow Lite model"),
    (0, b"\x89HDF", "this is an HDF5 file (a Keras .h5 model?)"),
    (0, b"\x1f\x8b", "this file is gzip-compressed; decompress it first"),
    (0, b"\x89PNG", "this is a PNG image"),
    (0, b"\xff\xd8\xff", "this is a JPEG image"),
    (0, b"{", "this looks like a JSON/text file"),
    (0, b"<", "this looks like an HTML/XML file (a failed download?)"),
)


def sniff_format(path: Path) -> str | None:
    """A hint naming the format of a file that is not ONNX, when it is a common one."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    for offset, magic, hint in _OTHER_FORMATS:
        if head[offset:offset + len(magic)] == magic:
            return hint
    return None


def find_problem(proto: onnx.ModelProto) -> tuple[str, str] | None:
    """The first problem in ``proto`` as ('graph' | 'data', one-line message), else None."""
    field = _invalid_text(proto, "model")
    if field is not None:
        return "data", f"{field} is not valid UTF-8 text (corrupted file?)"
    outer: set[str] = set()
    for where, graph, scope in _graphs(proto.graph, outer, "graph"):
        problem = _names_problem(where, graph, scope)
        if problem:
            return "graph", problem
        for node in graph.node:
            for attr in node.attribute:
                if attr.type not in _ATTRIBUTE_TYPES:
                    return "data", (f"{where}: node '{node.name or node.op_type}' attribute "
                                    f"'{attr.name}' has unknown type {attr.type}")
        for tensor, owner in _graph_tensors(graph):
            problem = _tensor_problem(tensor, f"{where}: {owner}")
            if problem:
                return "data", problem
    for function in proto.functions:
        for node in function.node:
            for tensor, owner in _node_tensors(node):
                problem = _tensor_problem(tensor, f"function '{function.name}': {owner}")
                if problem:
                    return "data", problem
    return None


def _invalid_text(message, path: str) -> str | None:
    """The first string field holding invalid UTF-8 (protobuf parses proto2 strings as
    bytes then, and serializing the model back would fail), as a field path."""
    for field, value in message.ListFields():
        repeated = field.is_repeated
        if field.type == field.TYPE_STRING:
            if any(isinstance(v, bytes) for v in (value if repeated else (value,))):
                return f"{path}.{field.name}"
        elif field.type == field.TYPE_MESSAGE:
            items = enumerate(value) if repeated else ((None, value),)
            for index, item in items:
                found = _invalid_text(item, f"{path}.{field.name}" + ("" if index is None else f"[{index}]"))
                if found:
                    return found
    return None


def _graphs(graph: onnx.GraphProto, outer: set[str], where: str
            ) -> Iterator[tuple[str, onnx.GraphProto, set[str]]]:
    """The graph and its subgraphs, each with the names visible from enclosing scopes."""
    yield where, graph, outer
    inner = outer | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    inner |= {name for node in graph.node for name in node.output if name}
    for node in graph.node:
        for attr in node.attribute:
            for index, sub in enumerate([attr.g] if attr.HasField("g") else list(attr.graphs)):
                label = f"{where} > node '{node.name or node.op_type}' attribute '{attr.name}'"
                yield from _graphs(sub, inner, label + (f"[{index}]" if attr.graphs else ""))


def _names_problem(where: str, graph: onnx.GraphProto, outer: set[str]) -> str | None:
    """Names must be assigned once (SSA), also across scopes (inputs may have initializers),
    and every name read must be assigned somewhere in scope."""
    seen: dict[str, str] = {}
    defined = [(v.name, "graph input") for v in graph.input]
    inputs = {v.name for v in graph.input}
    defined += [(t.name, "initializer") for t in graph.initializer if t.name not in inputs]
    defined += [(name, f"node '{node.name or node.op_type}'") for node in graph.node
                for name in node.output if name]
    for name, owner in defined:
        if name in seen or name in outer:
            first = seen.get(name, "an enclosing graph")
            return (f"{where}: tensor name '{name}' is defined twice ({first} and {owner}); "
                    "ONNX requires each name to be assigned once")
        seen[name] = owner
    for node in graph.node:
        for name in node.input:
            if name and name not in seen and name not in outer:
                return (f"{where}: input '{name}' of node '{node.name or node.op_type}' "
                        f"({node.op_type}) is produced by no node, graph input or initializer")
    for value in graph.output:
        if value.name not in seen and value.name not in outer:
            return f"{where}: graph output '{value.name}' is produced by no node, input or initializer"
    return None


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    for tensor in graph.initializer:
        yield tensor, f"initializer '{tensor.name}'"
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    for attr in node.attribute:
        label = f"node '{node.name or node.op_type}' attribute '{attr.name}'"
        if attr.HasField("t"):
            yield attr.t, label
        for tensor in attr.tensors:
            yield tensor, label


def _tensor_problem(tensor: onnx.TensorProto, where: str) -> str | None:
    if tensor.data_type not in _KNOWN_TYPES:
        return f"{where} has unknown data type {tensor.data_type}"
    if any(d < 0 for d in tensor.dims):
        return f"{where} has negative dimensions {list(tensor.dims)}"
    if tensor.data_location == _T.EXTERNAL:
        return None  # checked against the file once the paths are known
    size = 1
    for d in tensor.dims:
        size *= d
    dtype = ir.DataType(tensor.data_type)
    if tensor.HasField("raw_data") and dtype != ir.DataType.STRING:
        expected = -(-size * dtype.bitwidth // 8)
        if len(tensor.raw_data) != expected:
            return (f"{where}: {len(tensor.raw_data)} bytes of data for shape {list(tensor.dims)} "
                    f"of {dtype.name} ({expected} bytes expected; truncated or corrupted)")
        return None
    field = _TYPED_FIELDS.get(tensor.data_type)
    if field is not None and not tensor.HasField("raw_data"):
        count = len(getattr(tensor, field[0]))
        if count != size * field[1]:
            return (f"{where}: {count} values for shape {list(tensor.dims)} of {dtype.name} "
                    f"({size * field[1]} expected; truncated or corrupted)")
    return None


def find_cycle(graph: ir.Graph) -> ir.Node | None:
    """A node on a cycle of ``graph`` (iterative DFS over producers), or None."""
    state: dict[int, int] = {}  # id(node) -> 1 on the DFS stack, 2 done
    for root in graph:
        if id(root) in state:
            continue
        state[id(root)] = 1
        stack = [(root, iter(root.predecessors()))]
        while stack:
            node, preds = stack[-1]
            nxt = next(preds, None)
            if nxt is None:
                state[id(node)] = 2
                stack.pop()
            elif nxt.graph is not graph:
                continue
            elif state.get(id(nxt)) == 1:
                return nxt
            elif id(nxt) not in state:
                state[id(nxt)] = 1
                stack.append((nxt, iter(nxt.predecessors())))
    return None


def check_acyclic(graph: ir.Graph, source: str) -> None:
    """Refuse a graph with a cycle, naming a node on it."""
    node = find_cycle(graph)
    if node is not None:
        raise InvalidModelError(f"{source}: the graph has a cycle through node '{node.name}' ({node.op_type})")


def is_sorted(graph: ir.Graph) -> bool:
    position = {id(node): i for i, node in enumerate(graph)}
    return all(
        position.get(id(pred), -1) < i
        for i, node in enumerate(graph)
        for pred in node.predecessors()
        if pred.graph is graph
    )


def sort_if_needed(model: ir.Model, source: str) -> None:
    """Refuse a cycle; sort nodes stored out of topological order (in place)."""
    if all(is_sorted(graph) for graph in model.graphs()):
        return
    for graph in model.graphs():
        check_acyclic(graph, source)
    ir.passes.common.TopologicalSortPass()(model)
