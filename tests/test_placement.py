"""Latency-aware placement: kernels charged to classes, verdicts, and the measured re-emission."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import helper

import onnxprune
from onnxprune.api.kernel_profile import Profile, _charge, profiles
from onnxprune.api.placement import decide, node_class
from onnxprune.cli import cli
from onnxprune.passes.quantize.config import QuantConfig
from onnxprune.passes.quantize.quantize_pass import QuantizePass
from tiny import Tiny, feeds_for, fresh, rand

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"


def optimized_graph() -> onnx.GraphProto:
    """What ONNX Runtime's optimizer leaves of x -> Conv(dw) -> Relu -> Conv -> Div: a Q feeding an
    NHWC QLinearConv through an added Transpose, the depthwise conv left float between DQ/Q."""
    node = helper.make_node
    nodes = [
        node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_QuantizeLinear"),
        node("Transpose", ["xq"], ["xt"], name="Transpose_token_7", perm=[0, 2, 3, 1]),
        node("QLinearConv", ["xt", "s", "z", "w", "s", "z", "s", "z"], ["yq"], name="conv@1_token_3",
             domain="com.microsoft"),
        node("DequantizeLinear", ["yq", "s", "z"], ["y"], name="y_DequantizeLinear"),
        node("Conv", ["y", "wd"], ["d"], name="dw@2", group=8),
        node("Div", ["d", "s"], ["out"], name="div@3"),
    ]
    return helper.make_graph(nodes, "g", [], [])


def test_kernels_and_their_overheads_are_charged_to_the_class_they_serve():
    micros = {"x_QuantizeLinear": 5, "Transpose_token_7": 7, "conv@1_token_3": 100, "y_DequantizeLinear": 11,
              "dw@2": 50, "div@3": 3}  # fmt: skip
    classes, float_kernels, nodes = _charge(optimized_graph(), micros, {"conv@1", "dw@2", "div@3"})
    assert classes == {"Conv": 5 + 7 + 100 + 11, "Conv/grouped": 50, "Div": 3}
    assert nodes == {"conv@1": 5 + 7 + 100 + 11, "dw@2": 50, "div@3": 3}  # per original node alike
    assert float_kernels == {"dw@2"}  # a float kernel reading a DequantizeLinear: no INT8 kernel


def test_a_kernel_named_after_a_tensor_is_charged_to_the_node_that_wrote_it():
    """ONNX Runtime's NCHWc and fusion passes name some kernels after an output tensor
    ("conv_out_nchwc"), or write the last fused node's output (Conv+Add -> FusedConv)."""
    node = helper.make_node
    graph = helper.make_graph([node("Conv", ["x", "w"], ["conv_out"], name="conv_out_nchwc"),
                               node("FusedConv", ["conv_out", "w"], ["sum"], name="fused_7", domain="com.microsoft")],
                              "g", [], [])  # fmt: skip
    _, _, nodes = _charge(graph, {"conv_out_nchwc": 30, "fused_7": 20}, {"conv", "add"},
                          {"conv_out": "conv", "sum": "add"})  # fmt: skip
    assert nodes == {"conv": 30, "add": 20}


def conv(name: str, group: int = 1) -> ir.Node:
    return ir.node("Conv", [], attributes={"group": group}, name=name)


def test_decide_keeps_float_what_is_not_faster_or_has_no_kernel():
    nodes = [conv("a"), conv("b"), conv("dw", group=8), ir.node("Mul", [], name="m"), ir.node("Add", [], name="n")]
    fp32 = Profile({"Conv": 100.0, "Conv/grouped": 10.0, "Mul": 5.0, "Add": 8.0}, 1.0, set())
    int8 = Profile({"Conv": 60.0, "Conv/grouped": 30.0, "Mul": 5.0, "Add": 4.0}, 1.0, {"n"})
    exclude = decide(nodes, fp32, int8).exclude
    assert set(exclude) == {"dw", "m", "n"}  # slower, equal (not faster), no INT8 kernel
    assert "Conv/grouped is not faster" in exclude["dw"] and "no INT8 kernel" in exclude["n"]
    assert [node_class(n) for n in nodes[:3]] == ["Conv", "Conv", "Conv/grouped"]


def test_decide_per_node_where_both_profiles_attribute_the_node():
    """Per node (its kernel and the Q/DQ serving it) where both profiles name it; the class
    verdict only for the others: one slow Mul stays float, a fast one of the same class not."""
    nodes = [ir.node("Mul", [], name="slow"), ir.node("Mul", [], name="fast"), ir.node("Mul", [], name="unseen")]
    fp32 = Profile({"Mul": 30.0}, 1.0, set(), {"slow": 10.0, "fast": 20.0})
    int8 = Profile({"Mul": 25.0}, 1.0, set(), {"slow": 15.0, "fast": 10.0})
    exclude = decide(nodes, fp32, int8).exclude
    assert set(exclude) == {"slow"} and "0.015 ms with its Q/DQ vs 0.010 ms float" in exclude["slow"]
    slower_class = Profile({"Mul": 40.0}, 1.0, set(), {"slow": 15.0, "fast": 10.0})
    assert set(decide(nodes, fp32, slower_class).exclude) == {"slow", "unseen"}


def test_an_op_without_an_integer_kernel_stays_float_judged_from_the_optimized_graph():
    """ConvTranspose gets int8 weights (GPU providers run them) but ONNX Runtime's CPU provider
    has no integer kernel: its optimized graph keeps a float ConvTranspose between DQ and Q,
    which INT8 only slows down. Read from the optimized graph, not from timings."""
    g = Tiny({"x": [2, 4, 6, 6]})
    up = g.op("ConvTranspose", ["x", g.init("wt", rand(4, 4, 2, 2)), g.init("bt", rand(4))], name="up", strides=[2, 2])
    y = g.op("Conv", [up, g.init("w", rand(8, 4, 3, 3)), g.init("b", rand(8))], name="conv", pads=[1] * 4)
    proto = g.proto(y)
    float_model, int8_model = fresh(proto), fresh(proto)
    feeds = feeds_for(proto)
    int8_pass = QuantizePass(config=QuantConfig(), calibrator=lambda m, needed: dict.fromkeys(needed, (-4.0, 4.0)))
    int8_pass(int8_model)
    fp32, int8 = profiles([float_model, int8_model], feeds, "CPUExecutionProvider", runs=2)
    assert int8.float_kernels == {"up"}  # the Conv runs as QLinearConv
    assert {"up", "conv"} <= set(int8.nodes) and {"up", "conv"} <= set(fp32.nodes)  # both attributed
    assert pytest.approx(sum(int8.nodes.values())) == int8.total  # every kernel, Q/DQ included
    assert set(decide(int8_pass.plan.nodes, fp32, int8).exclude) >= {"up"}


def test_quantize_with_placement_measures_and_reports(tmp_path):
    result = onnxprune.quantize(DIGITS / "digits.onnx", tmp_path / "q.onnx", calib=DIGITS / "calib.npz",
                                samples=32, placement=True, placement_batch=4)  # fmt: skip
    placed = result.placement
    assert placed["fp32_ms"] > 0 and placed["int8_ms"] > 0 and placed["kernels_ms"]
    assert placed["kept_float"] == sum("INT8" in why for why in result.declined.values())
    onnx.checker.check_model(str(tmp_path / "q.onnx"))
    assert result.nodes_int8 + placed["kept_float"] >= 6  # every quantizable node is accounted for
    assert "placement" in result.to_dict()


def test_cli_places_by_default(tmp_path):
    out = tmp_path / "q.onnx"
    args = ["quantize", str(DIGITS / "digits.onnx"), "-o", str(out), "--calib", str(DIGITS / "calib.npz"),
            "--samples", "16", "--no-latency"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "placement (ONNX Runtime kernel time" in result.output
    result = CliRunner().invoke(cli, [*args, "--no-placement"], catch_exceptions=False)
    assert "placement" not in result.output
