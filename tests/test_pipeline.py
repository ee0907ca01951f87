"""run_pipeline: records per pass, verify catching a broken pass and naming it, errors."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import zoo
from onnxprune.errors import InvalidModelError, ParityError, UsageError
from onnxprune.passes import PASSES
from onnxprune.passes.base import Pass, PassResult
from onnxprune.pipeline import DEFAULT_PIPELINE, PipelineResult, Verifier, run_pipeline
from tiny import Tiny, assert_parity, fresh, ops, rand


class PerturbWeight(Pass):
    """Test only: adds 1% to the first float initializer (a silently wrong 'exact' pass)."""

    name = "perturb-weight"

    def call(self, model: ir.Model) -> PassResult:
        for value in model.graph.initializers.values():
            array = value.const_value.numpy()
            if array.dtype == np.float32 and array.size > 1:
                value.const_value = ir.tensor(array * 1.01, name=value.name)
                return PassResult(model, True, [f"{value.name}: scaled by 1.01"])
        return PassResult(model, False)


class BreakGraph(Pass):
    """Test only: points a node at a value nothing produces (an invalid graph)."""

    name = "break-graph"

    def call(self, model: ir.Model) -> PassResult:
        node = next(iter(model.graph))
        node.replace_input_with(0, ir.Value(name="nowhere", type=ir.TensorType(ir.DataType.FLOAT)))
        return PassResult(model, True, ["dangling input"])


def conv_bn_model() -> ir.Model:
    g = Tiny({"x": [1, 3, 6, 6]})
    y = g.op("Identity", [g.bn(g.op("Conv", ["x", g.init("w", rand(4, 3, 3, 3))], pads=[1] * 4), 4)])
    return fresh(g.proto(g.op("Relu", [y])))


def test_default_pipeline_is_registered_and_exact():
    assert all(name in PASSES and PASSES[name].exact for name in DEFAULT_PIPELINE)
    assert DEFAULT_PIPELINE.index("fold-constants") < DEFAULT_PIPELINE.index("fold-batchnorm")
    assert DEFAULT_PIPELINE.index("fold-batchnorm") < DEFAULT_PIPELINE.index("batchnorm-to-affine")
    assert DEFAULT_PIPELINE[-1] == "shape-inference"


def test_conv_mul_batchnorm_ends_as_one_conv():
    g = Tiny({"x": [1, 3, 6, 6]})
    y = g.op("Mul", [g.op("Conv", ["x", g.init("w", rand(4, 3, 3, 3))], pads=[1] * 4), g.init("s", rand(4, 1, 1))])
    proto = g.proto(g.bn(y, 4))
    result = run_pipeline(fresh(proto))
    assert ops(result.model) == ["Conv"]
    assert_parity(proto, result.model)


def test_records_say_what_each_pass_did():
    seen = []
    result = run_pipeline(conv_bn_model(), on_record=seen.append)
    assert isinstance(result, PipelineResult) and result.modified
    assert [r.name for r in result.records] == list(DEFAULT_PIPELINE) and seen == result.records
    by_name = {r.name: r for r in result.records}
    fold = by_name["fold-batchnorm"]
    assert fold.modified and fold.nodes_after == fold.nodes_before - 1 and fold.changes
    assert fold.seconds >= 0 and fold.parity is None
    unused = by_name["remove-unused"]
    assert unused.params_after < unused.params_before  # the BN's 4 vectors are gone
    assert by_name["eliminate-identity"].changes == ["1 Identity nodes removed"]
    assert not any(r.modified for r in result.records if r.name == "fold-affine")
    assert result.to_dict()["passes"][0]["name"] == "eliminate-identity"


def test_verify_passes_on_the_default_pipeline_and_records_parity():
    model = ir.load(zoo.export("resnet_basic"))
    result = run_pipeline(model, verify=Verifier())
    for record in result.records:
        assert record.parity["max_normalized_error"]["output"] <= 1e-5


def test_verify_catches_a_broken_pass_and_names_it():
    passes = ["fold-batchnorm", PerturbWeight(), "remove-unused"]
    with pytest.raises(ParityError, match="pass 'perturb-weight' broke parity: output"):
        run_pipeline(conv_bn_model(), passes, verify=Verifier())


def test_verify_catches_an_invalid_graph_and_names_the_pass():
    with pytest.raises(InvalidModelError, match="after pass 'break-graph'"):
        run_pipeline(conv_bn_model(), ["eliminate-identity", BreakGraph()], verify=Verifier())


def test_without_verify_a_broken_pass_goes_unnoticed():
    # Verification is what catches it: the same run without it completes.
    result = run_pipeline(conv_bn_model(), ["fold-batchnorm", PerturbWeight()])
    assert result.records[-1].changes == ["w: scaled by 1.01"]


def test_unknown_pass_name():
    with pytest.raises(UsageError, match="unknown pass 'fold-everything'"):
        run_pipeline(conv_bn_model(), ["fold-batchnorm", "fold-everything"])


class SplitBatchNorm(Pass):
    """Test only: BN as Sub(mean) -> Mul(s) -> Add(beta) in float32, an exact rewrite that ONNX
    Runtime does not fuse back into the Conv (it fuses Conv+BN itself, so the reference is fused)."""

    name = "split-batchnorm"

    def __init__(self, skew: float = 0.0) -> None:
        super().__init__()
        self.skew = skew  # > 0: a wrong rewrite (beta shifted by skew)

    def call(self, model: ir.Model) -> PassResult:
        bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
        gamma, beta, mean, var = (v.const_value.numpy().astype(np.float64) for v in bn.inputs[1:])
        s = (gamma / np.sqrt(var + 1e-5)).reshape(-1, 1, 1)
        x, out = bn.inputs[0], bn.outputs[0]
        consts = [ir.Value(name=f"c{i}", const_value=ir.tensor(a.reshape(-1, 1, 1).astype(np.float32), name=f"c{i}"))
                  for i, a in enumerate((mean, s, beta + self.skew))]
        for value in consts:
            model.graph.register_initializer(value)
        sub = ir.node("Sub", [x, consts[0]])
        mul = ir.node("Mul", [sub.outputs[0], consts[1]])
        add = ir.node("Add", [mul.outputs[0], consts[2]])
        model.graph.insert_before(bn, [sub, mul, add])
        ir.convenience.replace_all_uses_with(out, add.outputs[0])
        model.graph.remove(bn, safe=True)
        return PassResult(model, True, ["BN split"])


def cancelling_conv_bn() -> ir.Model:
    """Conv with a bias of 1e4 and a BN removing it again: in float32 the unfused graph rounds
    the Conv's output at 1e4, ~1e-4 of the small result (as PP-OCRv4's detector head does)."""
    g = Tiny({"x": [1, 3, 8, 8]})
    y = g.op("Conv", ["x", g.init("w", rand(4, 3, 3, 3)), g.init("b", np.full(4, 1e4, np.float32))], pads=[1] * 4)
    params = [np.ones(4, np.float32), np.zeros(4, np.float32), np.full(4, 1e4, np.float32), np.ones(4, np.float32)]
    bn = g.op("BatchNormalization", [y, *(g.init(f"bn.{i}", a) for i, a in enumerate(params))], name="bn")
    return fresh(g.proto(g.op("Identity", [bn])))


def test_verify_judges_against_the_models_own_float32_spread():
    # the reference (ORT fuses Conv+BN) and the split BN differ by ORT's own rounding, no more
    verifier = Verifier()
    result = run_pipeline(cancelling_conv_bn(), [SplitBatchNorm()], verify=verifier)
    (name, floor), = verifier.noise_floor.items()
    error = result.records[0].parity["max_normalized_error"][name]
    assert 1e-5 < error <= 2 * floor  # over the plain tolerance, within the model's own spread
    assert result.records[0].parity["noise_floor"][name] == floor
    # a wrong rewrite (beta off by 1 % of the output's range) still fails, naming the spread
    with pytest.raises(ParityError, match="or 2x the original's own float32 spread"):
        run_pipeline(cancelling_conv_bn(), [SplitBatchNorm(skew=0.05)], verify=Verifier())


def test_verify_has_no_spread_to_spend_on_an_exact_model():
    verifier = Verifier()
    run_pipeline(conv_bn_model(), ["fold-batchnorm"], verify=verifier)
    assert max(verifier.noise_floor.values()) < 1e-6
