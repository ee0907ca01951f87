"""Writing a single-file ONNX model one initializer at a time.

``ir.save`` (like ``onnx.save``) builds the whole ``ModelProto`` and then its bytes: two more
copies of every weight on top of the model in memory (about 3x the weights at the peak).
Protobuf's wire format lets us do without: a message is the concatenation of its encoded
fields, in any order, and a sub-message is ``tag, length, bytes``. So we serialize the model
without its initializers (small), then append each initializer to the graph field as its
own ``TensorProto`` record, building one tensor's bytes at a time. Parsers read the result
exactly as the model ``ir.save`` writes (only the order of the graph's fields differs).
"""

from __future__ import annotations

import os

import onnx_ir as ir

_MODEL_GRAPH_TAG = bytes([(7 << 3) | 2])  # ModelProto.graph = 7, length-delimited
_GRAPH_INITIALIZER_TAG = bytes([(5 << 3) | 2])  # GraphProto.initializer = 5, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _record(tag: bytes, payload_size: int) -> bytes:
    return tag + _varint(payload_size)


def save_streamed(model: ir.Model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` as one protobuf file, holding one tensor's bytes at a time."""
    graph = model.graph
    initializers = list(graph.initializers.values())
    if any(v.const_value is None for v in initializers):  # nothing to stream: let onnx-ir decide
        ir.save(model, path)
        return
    graph.initializers.clear()
    try:
        skeleton = ir.serde.serialize_model(model)
    finally:
        for value in initializers:
            graph.initializers.add(value)
    graph_head = skeleton.graph.SerializeToString()
    skeleton.ClearField("graph")
    model_head = skeleton.SerializeToString()

    def tensor_bytes(value: ir.Value) -> bytes:
        assert value.const_value is not None  # initializers hold their tensor
        return ir.serde.serialize_tensor(value.const_value).SerializeToString()

    # The graph's length comes first on the wire: size every tensor record, then write them.
    sizes = [len(tensor_bytes(v)) for v in initializers]
    graph_size = len(graph_head) + sum(len(_record(_GRAPH_INITIALIZER_TAG, s)) + s for s in sizes)
    with open(path, "wb") as handle:
        handle.write(model_head)
        handle.write(_record(_MODEL_GRAPH_TAG, graph_size))
        handle.write(graph_head)
        for value, size in zip(initializers, sizes):
            data = tensor_bytes(value)
            assert len(data) == size, f"tensor '{value.name}' changed size while saving"
            handle.write(_record(_GRAPH_INITIALIZER_TAG, size))
            handle.write(data)
