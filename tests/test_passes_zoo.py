"""The exact passes on real graphs (PyTorch exports of the zoo) and on random valid graphs."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from hypothesis import given

import graphgen
import zoo
from onnxprune.passes import get_pass
from onnxprune.pipeline import DEFAULT_PIPELINE, run_pipeline
from tiny import assert_parity, ops

# Architecture -> BN nodes fold-batchnorm must fold into their producer (all of them, except
# DenseNet's pre-activation BNs after a Concat/pool, which batchnorm-to-affine handles).
BACKWARD_FOLDS = {"resnet_basic": 6, "resnet_bottleneck": 8, "mobilenet_v2": 10, "se_block": 2,
                  "concat_block": 3, "resnext": 8, "unet": 10, "vgg": 3, "densenet": 5}


def load(name: str) -> ir.Model:
    return ir.load(zoo.export(name))


def feeds(name: str) -> dict:
    return {"input": zoo.sample_input(name, seed=3)}


@pytest.mark.parametrize("name", sorted(zoo.ARCHITECTURES))
def test_default_pipeline_keeps_outputs_and_removes_batchnorm(name):
    model = load(name)
    result = run_pipeline(model, DEFAULT_PIPELINE)
    assert "BatchNormalization" not in ops(result.model)
    assert_parity(load(name), result.model, feeds(name))
    second = run_pipeline(result.model, DEFAULT_PIPELINE[:-1])  # idempotent (shape-inference aside)
    assert not second.modified, [r.changes for r in second.records if r.modified]


@pytest.mark.parametrize("name, folds", sorted(BACKWARD_FOLDS.items()))
def test_fold_batchnorm_alone(name, folds):
    model = load(name)
    result = get_pass("fold-batchnorm")(model)
    assert len(result.changes) == folds
    assert ops(model).count("BatchNormalization") == ops(load(name)).count("BatchNormalization") - folds
    assert_parity(load(name), model, feeds(name))


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "densenet", "unet", "vgg"])
def test_batchnorm_to_affine_alone(name):
    # Without fold-batchnorm first, every BN goes forward into a Conv/Gemm or becomes Mul + Add.
    model = load(name)
    assert get_pass("batchnorm-to-affine")(model).modified
    assert "BatchNormalization" not in ops(model)
    assert_parity(load(name), model, feeds(name))


@pytest.mark.parametrize("name", ["resnet_bottleneck", "mobilenet_v2", "se_block", "unet"])
def test_batchnorm_to_affine_then_fold_affine_equals_fold_batchnorm(name):
    # BN -> Mul + Add, then fold-affine absorbs them: the same convs end up with no BN.
    model = load(name)
    for name_ in ("batchnorm-to-affine", "fold-affine"):
        get_pass(name_)(model)
    reference = load(name)
    get_pass("fold-batchnorm")(reference)
    assert_parity(load(name), model, feeds(name))
    assert ops(model).count("Conv") == ops(reference).count("Conv")


def test_transformer_mlp_fold_affine_after_scaling():
    # A scale after the MLP's second Linear (as layer-scale would add) folds into its MatMul.
    model = load("transformer_mlp")
    out = model.graph.outputs[0]
    scale = ir.Value(name="layer_scale", shape=ir.Shape([32]), type=ir.TensorType(ir.DataType.FLOAT),
                     const_value=ir.tensor(zoo.sample_input("transformer_mlp")[0, 0]))
    model.graph.register_initializer(scale)
    mul = ir.node("Mul", [out, scale], name="layer_scale_mul")
    model.graph.append(mul)
    mul.outputs[0].name = "scaled"
    model.graph.outputs[0] = mul.outputs[0]
    reference = ir.from_proto(ir.to_proto(model))
    # fold-constants first, as in the pipeline: the exporter writes W as Transpose(fc.weight).
    records = run_pipeline(model, ["fold-constants", "fold-affine"]).records
    assert records[1].changes == ["layer_scale_mul: Mul by a constant folded into MatMul '/fc2/MatMul'"]
    assert ops(model)[-2:] == ["MatMul", "Add"]
    assert_parity(reference, model, feeds("transformer_mlp"))


@given(graphgen.graphs(noise=True))
def test_default_pipeline_on_random_graphs(g):
    model = run_pipeline(g.model(), DEFAULT_PIPELINE).model
    assert "BatchNormalization" not in ops(model)
    # Untrained random nets can end in outputs near 0 by cancellation: their float32 rounding
    # noise is judged against activations of order 1 (floor), not against the tiny output.
    assert_parity(g.model(), model, g.feeds, floor=1.0)
