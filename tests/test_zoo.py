"""The test zoo: every architecture exports, is valid ONNX, and matches PyTorch in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import zoo
from onnxprune import runtime

NAMES = sorted(zoo.ARCHITECTURES)
REQUIRED = {
    "resnet_basic", "resnet_bottleneck", "resnext", "mobilenet_v2", "mobilenet_v3",
    "efficientnet", "densenet", "squeezenet", "shufflenet", "vgg", "unet", "transformer",
    "se_block", "concat_block", "transformer_mlp",
}
# Ops that show the block is really there (as the legacy exporter writes it at opset 17).
SIGNATURE_OPS = {
    "resnet_basic": {"Add", "Conv", "GlobalAveragePool", "Gemm"},
    "mobilenet_v2": {"Clip"},  # ReLU6
    "mobilenet_v3": {"HardSwish", "HardSigmoid", "Mul"},
    "efficientnet": {"Sigmoid", "Mul"},
    "densenet": {"Concat", "AveragePool"},
    "squeezenet": {"Concat", "MaxPool"},
    "shufflenet": {"Reshape", "Transpose", "Concat"},
    "vgg": {"Flatten", "Gemm", "MaxPool"},
    "unet": {"ConvTranspose", "Concat", "MaxPool"},
    "transformer": {"LayerNormalization", "Softmax", "MatMul", "Erf"},
    "se_block": {"GlobalAveragePool", "Sigmoid", "Mul"},
    "concat_block": {"Concat"},
    "transformer_mlp": {"MatMul", "Erf"},
}


def test_registry_covers_all_required_architectures():
    assert REQUIRED <= set(zoo.ARCHITECTURES)


@pytest.mark.parametrize("name", NAMES)
def test_export_is_valid_and_matches_pytorch(name):
    model, shape = zoo.ARCHITECTURES[name]()
    assert not model.training and shape[0] == 1
    path = zoo.export(name)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    ops = {node.op_type for node in proto.graph.node}
    assert SIGNATURE_OPS.get(name, set()) <= ops
    assert ("BatchNormalization" in ops) == zoo.has_batchnorm(model)

    x = zoo.sample_input(name)
    assert x.shape == shape and x.dtype == np.float32
    got = runtime.run(path, {"input": x})["output"]
    np.testing.assert_allclose(got, zoo.torch_output(name, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_dynamic_batch_export_runs_any_batch(name):
    path = zoo.export(name, dynamic_batch=True)
    assert path != zoo.export(name)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = zoo.sample_input(name, batch=3, seed=1)
    got = runtime.run(path, {"input": x})["output"]
    np.testing.assert_allclose(got, zoo.torch_output(name, x), atol=1e-4, rtol=0)


def test_batchnorm_statistics_are_randomized_and_seeded():
    model, _ = zoo.ARCHITECTURES["resnet_basic"]()
    again, _ = zoo.ARCHITECTURES["resnet_basic"]()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for bn in norms:
        assert bn.running_mean.abs().max() > 0 and (bn.running_var > 0).all()
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_export_is_cached_and_not_rewritten():
    path = zoo.export("se_block")
    stamp = path.stat().st_mtime_ns
    assert zoo.export("se_block") == path
    assert path.stat().st_mtime_ns == stamp
    assert not list(path.parent.glob(".*.tmp"))  # no temp file left behind


def test_export_rejects_unknown_name():
    with pytest.raises(KeyError, match="unknown zoo architecture 'nope'"):
        zoo.export("nope")


def test_export_module_writes_given_path(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    # Fresh BN has weight == running_var == 1: the exporter would dedupe them via Identity.
    zoo.randomize_norms(module, torch.Generator().manual_seed(0))
    path = zoo.export_module(module, (1, 2, 8, 8), tmp_path / "m.onnx", opset=18)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 18
    assert [n.op_type for n in proto.graph.node] == ["Conv", "BatchNormalization"]


def test_opset_20_writes_gelu_op():
    proto = onnx.load(str(zoo.export("transformer_mlp", opset=20)))
    assert [n.op_type for n in proto.graph.node if n.op_type in ("MatMul", "Gelu")] == [
        "MatMul", "Gelu", "MatMul"
    ]
