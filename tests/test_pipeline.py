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
