"""save_streamed writes the same model as ir.save, one initializer at a time."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

import zoo
from onnxprune import runtime
from onnxprune._stream_save import save_streamed
from tiny import Tiny, fresh, max_error, rand


def without_initializer_value_info(proto: onnx.ModelProto) -> bytes:
    """ir.save also writes a value_info per initializer (redundant with the tensor's dims)."""
    names = {t.name for t in proto.graph.initializer}
    kept = [v for v in proto.graph.value_info if v.name not in names]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    return proto.SerializeToString(deterministic=True)


@pytest.mark.parametrize("name", ["resnet_basic", "transformer", "unet"])
def test_same_model_as_ir_save(name, tmp_path):
    model = ir.load(zoo.export(name))
    model.metadata_props["note"] = "kept"
    order = list(model.graph.initializers)
    save_streamed(model, tmp_path / "streamed.onnx")
    ir.save(model, tmp_path / "reference.onnx")
    assert list(model.graph.initializers) == order  # the model is left as it was
    assert all(v.is_initializer() for v in model.graph.initializers.values())

    streamed = onnx.load(str(tmp_path / "streamed.onnx"))
    onnx.checker.check_model(streamed, full_check=True)
    assert without_initializer_value_info(streamed) == without_initializer_value_info(
        onnx.load(str(tmp_path / "reference.onnx"))
    )
    x = {"input": zoo.sample_input(name)}
    expected = runtime.run(zoo.export(name), x)["output"]
    assert max_error(expected, runtime.run(tmp_path / "streamed.onnx", x)["output"]) == 0


def test_model_without_initializers(tmp_path):
    g = Tiny({"x": [2, 3]})
    model = fresh(g.proto(g.op("Relu", ["x"])))
    save_streamed(model, tmp_path / "m.onnx")
    assert [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node] == ["Relu"]


def test_long_tensor_records(tmp_path):
    # A tensor over 2**21 bytes needs a 4-byte length varint; sizes must add up exactly.
    g = Tiny({"x": [1, 1024]})
    model = fresh(g.proto(g.op("MatMul", ["x", g.init("w", rand(1024, 1024))])))
    save_streamed(model, tmp_path / "m.onnx")
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    assert loaded.graph.initializer[0].dims == [1024, 1024]
