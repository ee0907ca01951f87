"""Bad model files, generated on demand into a folder (nothing binary is committed).

Each :class:`Case` writes one broken or hostile model and says what onnxprune must do with
it: the project error, a fragment its one-line message contains, and the behaviour line
the README lists. ``good_model`` is the valid model the cases are made from: x[N,3,8,8] ->
Conv(W, B) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(G) -> y[N,10], opset 17,
optionally with its weights in ``model.onnx.data``.

    for case in corrupt.CASES:
        path = case.make(tmp_path / case.name)
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.errors import InvalidModelError, ModelLoadError, OnnxPruneError, UnsafeModelError, UnsupportedError


def good_proto(opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("W", (4, 3, 3, 3)), ("B", (4,)), ("G", (10, 4)))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "G"], ["y"], transB=1, name="fc")]
    graph = helper.make_graph(nodes, "good", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def good_model(folder: Path, external: bool = False, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(good_proto(), str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=name + ".data", size_threshold=0)
    return path


@dataclasses.dataclass
class Case:
    name: str
    make: Callable[[Path], Path]  # writes into a new folder, returns the model's path
    error: type[OnnxPruneError]
    message: str  # a fragment of the one-line message
    behaviour: str  # for the README


def _write(folder: Path, data: bytes, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def _proto(folder: Path, edit: Callable[[onnx.ModelProto], None], external: bool = False) -> Path:
    path = good_model(folder, external)
    proto = onnx.load(str(path), load_external_data=False)
    edit(proto)
    path.write_bytes(proto.SerializeToString())
    return path


def _location(value: str) -> Callable[[onnx.ModelProto], None]:
    def edit(proto):
        for entry in proto.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = value
    return edit


def _outside(folder: Path, link: Callable[[Path, Path], None]) -> Path:
    """The model in folder/model/, its data moved to folder/outside/, reached via ``link``."""
    path = good_model(folder / "model", external=True)
    (folder / "outside").mkdir()
    data = path.with_name("model.onnx.data")
    target = folder / "outside" / "weights.bin"
    os.replace(data, target)
    link(target, data)
    return path


def _dotdot(folder: Path) -> Path:
    path = _outside(folder, lambda target, data: None)
    proto = onnx.load(str(path), load_external_data=False)
    _location("../outside/weights.bin")(proto)  # the first tensor reaches out through '..'
    path.write_bytes(proto.SerializeToString())
    return path


def _data_file(folder: Path, change: Callable[[Path], None]) -> Path:
    path = good_model(folder, external=True)
    change(path.with_name("model.onnx.data"))
    return path


def _nodes(nodes: list[onnx.NodeProto], opsets=(("", 17),)) -> Callable[[onnx.ModelProto], None]:
    def edit(proto):
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        del proto.opset_import[:]
        proto.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets)
    return edit


def _node(op, inputs, outputs, name, **kw):
    return helper.make_node(op, inputs, outputs, name=name, **kw)


_HEAD = [_node("Conv", ["x", "W", "B"], ["c"], "conv", pads=[1, 1, 1, 1])]
_TAIL = [_node("GlobalAveragePool", ["r"], ["p"], "gap"), _node("Flatten", ["p"], ["f"], "flatten"),
         _node("Gemm", ["f", "G"], ["y"], "fc", transB=1)]


def _bad_utf8(folder: Path) -> Path:
    path = good_model(folder)
    data = path.read_bytes().replace(b"gap", b"g\xff\xfe", 1)  # a node name, same length
    path.write_bytes(data)
    return path


def _truncate_raw(proto: onnx.ModelProto) -> None:
    proto.graph.initializer[0].raw_data = proto.graph.initializer[0].raw_data[:-4]


def _set_dtype(proto: onnx.ModelProto) -> None:
    proto.graph.initializer[0].data_type = 99


def _set_length(proto: onnx.ModelProto) -> None:
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = str(int(entry.value) - 8)


def _zip(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "model.onnx", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}}))
    return folder / "model.onnx"


CASES: list[Case] = [
    Case("missing", lambda f: f / "model.onnx", ModelLoadError, "no such file", "missing file: refused"),
    Case("empty", lambda f: _write(f, b""), ModelLoadError, "file is empty", "empty file: refused"),
    Case("truncated", lambda f: _write(f, good_model(f).read_bytes()[:700]), ModelLoadError,
         "not a valid ONNX model", "truncated protobuf: refused (parse failure or a tensor's data too short)"),
    Case("zip", _zip, ModelLoadError, "zip archive", "a zip (PyTorch checkpoint, .npz): refused with a hint"),
    Case("pickle", lambda f: _write(f, pickle.dumps({"w": [1.0]}, protocol=4)), ModelLoadError, "pickle",
         "a Python pickle: refused with a hint"),
    Case("png", lambda f: _write(f, b"\x89PNG\r\n\x1a\n" + bytes(64)), ModelLoadError, "PNG",
         "an image or other known format: refused with a hint"),
    Case("html", lambda f: _write(f, b"<!DOCTYPE html><html><body>404</body></html>"), ModelLoadError,
         "HTML", "an HTML page (failed download): refused with a hint"),
    Case("garbage", lambda f: _write(f, np.random.default_rng(1).bytes(4096)), ModelLoadError,
         "ONNX model", "random bytes: refused"),
    Case("no_graph", lambda f: _write(f, onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString()),
         ModelLoadError, "no graph", "a protobuf without a graph: refused"),
    Case("absolute_data", lambda f: _proto(f, _location(str((f / "model.onnx.data").resolve())), True),
         UnsafeModelError, "absolute path", "external data at an absolute path: refused (unsafe)"),
    Case("dotdot_data", _dotdot,
         UnsafeModelError, "outside the model's folder", "external data via '..' outside the model's folder: refused (unsafe)"),
    Case("symlink_data", lambda f: _outside(f, lambda t, d: d.symlink_to(t)), UnsafeModelError, "through a symlink",
         "external data through a symlink leading out of the folder: refused (unsafe)"),
    Case("hardlink_data", lambda f: _outside(f, lambda t, d: os.link(t, d)), UnsafeModelError, "hard links",
         "external data file with several hard links: refused (unsafe)"),
    Case("missing_data", lambda f: _data_file(f, Path.unlink), ModelLoadError, "is missing",
         "external data file missing: refused"),
    Case("short_data", lambda f: _data_file(f, lambda d: os.truncate(d, 100)), ModelLoadError, "too short",
         "external data file too short: refused"),
    Case("data_length", lambda f: _proto(f, _set_length, True), ModelLoadError, "does not match",
         "external data length disagreeing with the tensor's shape: refused"),
    Case("raw_data_size", lambda f: _proto(f, _truncate_raw), ModelLoadError, "truncated or corrupted",
         "tensor with less/more data than its shape: refused"),
    Case("bad_dtype", lambda f: _proto(f, _set_dtype), ModelLoadError, "unknown data type",
         "tensor of an unknown data type: refused"),
    Case("bad_utf8", _bad_utf8, ModelLoadError, "not valid UTF-8", "names that are not UTF-8: refused"),
    Case("cycle", lambda f: _proto(f, _nodes([_node("Add", ["c", "y2"], ["s"], "add"), _node("Relu", ["s"], ["r"], "relu"),
                                              *_HEAD, *_TAIL, _node("Identity", ["r"], ["y2"], "loop")])),
         InvalidModelError, "cycle", "a cycle: refused"),
    Case("dangling", lambda f: _proto(f, _nodes([*_HEAD, _node("Add", ["c", "nowhere"], ["r"], "add"), *_TAIL])),
         InvalidModelError, "produced by no node", "an input nothing produces: refused"),
    Case("duplicate_name", lambda f: _proto(f, _nodes([*_HEAD, _node("Relu", ["c"], ["r"], "relu"),
                                                       _node("Sigmoid", ["c"], ["r"], "sigmoid"), *_TAIL])),
         InvalidModelError, "defined twice", "a tensor name assigned twice: refused"),
    Case("unknown_domain", lambda f: _proto(f, _nodes([*_HEAD, _node("Magic", ["c"], ["r"], "magic", domain="com.example"), *_TAIL],
                                                      (("", 17), ("com.example", 1)))),
         InvalidModelError, "unknown domain", "an op from an unknown domain (no function given): refused"),
    Case("unknown_op", lambda f: _proto(f, _nodes([*_HEAD, _node("NotAnOp", ["c"], ["r"], "x"), *_TAIL])),
         InvalidModelError, "NotAnOp", "an unknown op of the ONNX domain: refused (ONNX checker)"),
    Case("bad_arity", lambda f: _proto(f, _nodes([_node("Conv", ["x"], ["c"], "conv"), _node("Relu", ["c"], ["r"], "relu"), *_TAIL])),
         InvalidModelError, "ONNX checker", "an op with wrong inputs/attributes: refused (ONNX checker)"),
    Case("opset_too_new", lambda f: _proto(f, lambda p: setattr(p.opset_import[0], "version", 99)),
         UnsupportedError, "opset 99", "an opset newer than onnx knows: refused"),
    Case("ir_too_new", lambda f: _proto(f, lambda p: setattr(p, "ir_version", 99)),
         InvalidModelError, "ir_version", "an IR version newer than onnx knows: refused (ONNX checker)"),
]
