"""Map-typed values (skl2onnx's ZipMap output: a sequence of {class: probability} maps).

onnx-ir reads tensor, sequence and optional types but refuses map types, so a scikit-learn
classifier converted with its default ``ZipMap`` would not load. The map-typed graph outputs
lose their type proto before onnx-ir reads the model (the values and the nodes that make them
stay: ONNX Runtime infers the type) and get it back in every file we write and every proto
the ONNX checker sees. A map-typed graph *input* (a ``DictVectorizer`` front) cannot be fed
from arrays: it is refused, naming the input.

ONNX Runtime returns a sequence of maps as a list of dicts; :func:`densify` turns it into the
``[N, C]`` array of the values ordered by key, which every comparison then treats like any
probability output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxprune.errors import UnsupportedError

META = "onnxprune.map_types"  # model.meta: {graph output name: serialized TypeProto}


def has_map(type_proto: onnx.TypeProto) -> bool:
    """Whether a map appears anywhere in the type (seq(map(...)), optional(map(...))...)."""
    kind = type_proto.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind == "sequence_type":
        return has_map(type_proto.sequence_type.elem_type)
    if kind == "optional_type":
        return has_map(type_proto.optional_type.elem_type)
    return False


def take_out(proto: onnx.ModelProto, source: str) -> dict[str, bytes]:
    """Strip map types from ``proto`` in place (graph outputs keep their names, untyped;
    value_info entries go); returns {output name: type proto bytes} to put back."""
    graph = proto.graph
    for value in graph.input:
        if has_map(value.type):
            users = sorted({n.op_type for n in graph.node if value.name in n.input})
            raise UnsupportedError(
                f"{source}: input '{value.name}' is a map ({', '.join(users) or 'no consumer'}), which cannot be fed "
                "from arrays; convert the model from the step after it (e.g. skl2onnx on the estimator after "
                "the DictVectorizer)")
    taken = {}
    for value in graph.output:
        if has_map(value.type):
            taken[value.name] = value.type.SerializeToString()
            value.ClearField("type")
    kept = [v for v in graph.value_info if not has_map(v.type)]
    if len(kept) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return taken


def put_back(proto: onnx.ModelProto, model: ir.Model) -> bool:
    """Give untyped graph outputs of ``proto`` their map type again: the one recorded at load,
    else what ONNX shape inference gives (a copy of the model has no record). True if any."""
    untyped = [v for v in proto.graph.output if not v.HasField("type")]
    if not untyped:
        return False
    recorded = model.meta.get(META) or {}
    missing = [v for v in untyped if v.name not in recorded]
    inferred = {}
    if missing:
        try:
            done = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # noqa: BLE001 - inference is a best effort; ORT infers the type anyway
            done = proto
        inferred = {v.name: v.type for v in (*done.graph.output, *done.graph.value_info) if v.HasField("type")}
    for value in untyped:
        if value.name in recorded:
            value.type.ParseFromString(recorded[value.name])
        elif value.name in inferred:
            value.type.CopyFrom(inferred[value.name])
    return True


def restore_file(path, model: ir.Model) -> None:
    """Put map types back into a model file just written by onnx-ir (external data untouched)."""
    proto = onnx.load(str(path), load_external_data=False)
    if put_back(proto, model):
        onnx.save(proto, str(path))


def needs_restore(model: ir.Model) -> bool:
    """Some graph output has no type (a map type taken out at load, or a copy of such a model)."""
    return any(v.type is None for v in model.graph.outputs)


def describe(model: ir.Model, name: str) -> str:
    """A map type taken out at load, as ONNX Runtime writes it (``seq(map(int64,tensor(float)))``)."""
    recorded = (model.meta.get(META) or {}).get(name)
    if recorded is None:
        return "?"
    type_proto = onnx.TypeProto()
    type_proto.ParseFromString(recorded)
    return _text(type_proto)


def _text(t: onnx.TypeProto) -> str:
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({_text(t.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_text(t.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.helper.tensor_dtype_to_np_dtype(t.map_type.key_type)
        return f"map({'string' if key.kind in 'OU' else key},{_text(t.map_type.value_type)})"
    return "?"


def densify(value: object) -> object:
    """A sequence of maps (ONNX Runtime's list of dicts) as the ``[N, C]`` array of its values
    ordered by key; anything else unchanged."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return value
    keys = sorted(value[0])
    return np.array([[m[k] for k in keys] for m in value], dtype=np.float32)


def densify_all(values: Sequence[object]) -> list:
    return [densify(v) for v in values]
