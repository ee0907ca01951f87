"""`onnxprune prune` and the prune() API / PrunePass on the shipped digits model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune import load_model, runtime, stats
from onnxprune.api import prune
from onnxprune.cli import cli
from onnxprune.errors import UsageError
from onnxprune.passes.prune import PruneOptions, PrunePass
from onnxprune.pipeline import run_pipeline
from onnxprune.validate import check_model

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"


@pytest.fixture()
def model(tmp_path) -> Path:
    path = tmp_path / "digits.onnx"
    shutil.copy(DIGITS / "digits.onnx", path)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, ["-q", "prune", *map(str, args)])


def test_prune_writes_a_smaller_valid_model_and_a_report(model, tmp_path):
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = invoke(model, "-o", out, "--ratio", "0.3", "--criterion", "l1", "--report", report, "--latency-runs", "3")
    assert result.exit_code == 0, result.output
    assert "MACs" in result.output and "latency" in result.output and "wrote" in result.output
    pruned = load_model(out)
    check_model(pruned)
    data = json.loads(report.read_text())
    assert data["after"]["macs"] < data["before"]["macs"]
    assert data["after"]["parameters"] < data["before"]["parameters"]
    assert data["latency_ms"]["before"] > 0 and data["latency_ms"]["after"] > 0
    assert data["criterion"] == "l1" and data["groups"]
    assert data["compensation"] == "BatchNorm statistics (data-free)"  # no --calib given
    assert {g["status"] for g in data["groups"]} <= {"pruned", "kept", "declined", "excluded"}
    assert any(g["status"] == "pruned" and g["kept"] < g["channels"] for g in data["groups"])
    # BatchNorm folded after pruning (fold is on by default).
    assert "BatchNormalization" not in stats.summarize(pruned)["ops"]
    feeds = {"input": np.load(DIGITS / "eval.npz")["input"][:4]}
    assert runtime.run(pruned, feeds)["logits"].shape == (4, 10)


def test_dry_run_prints_the_plan_and_writes_nothing(model, tmp_path):
    result = invoke(model, "--target-macs", "0.6", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run: nothing written" in result.output and "estimated" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.onnx"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ratio", "1.0"], "[0, 1)"),
        (["--ratio", "-0.1"], "[0, 1)"),
        (["--target-macs", "0.001"], "out of reach"),
        (["--target-macs", "0"], "(0, 1]"),
        (["--ratio", "0.3", "--exclude", "no_such_conv"], "'no_such_conv' names no node"),
        (["--ratio", "0.3", "--criterion", "activation"], "needs calibration data"),
        (["--ratio", "0.3", "--target-macs", "0.5"], "only one of"),
        ([], "say how much"),
        (["--ratio", "0.3", "--round-to", "0"], "--round-to"),
        (["--ratio", "0.3", "--group-ratio", "conv"], "PATTERN=RATIO"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(model, tmp_path, args, message):
    out = tmp_path / "out.onnx"
    result = invoke(model, "-o", out, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_calibration_data_that_does_not_fit_is_exit_2(model, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 1, 9, 9), np.float32))
    out = tmp_path / "out.onnx"
    result = invoke(model, "-o", out, "--ratio", "0.3", "--criterion", "activation", "--calib", bad)
    assert result.exit_code == 2, result.output
    assert "input" in result.output and not out.exists()


def test_calibration_data_feeds_the_activation_criterion_and_the_compensation(model, tmp_path):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    result = invoke(model, "-o", out, "--ratio", "0.3", "--criterion", "apoz", "--calib", DIGITS / "calib.npz",
                    "--calib-limit", "64", "--batch-size", "16", "--report", report, "--latency-runs", "0")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["criterion"] == "apoz" and data["compensation"] == "calibration means"
    check_model(load_model(out))


def test_refuses_to_overwrite_the_input(model):
    result = invoke(model, "-o", model, "--ratio", "0.3")
    assert result.exit_code == 2 and "overwrite" in result.output


def test_exclusions_round_to_and_target(model, tmp_path):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    first_conv = next(n.name for n in load_model(model).graph if n.op_type == "Conv")
    result = invoke(
        model, "-o", out, "--target-macs", "0.7", "--round-to", "8", "--exclude", f"{first_conv},nothing*",
        "--report", report, "--latency-runs", "0",
    )
    # 'nothing*' matches no node: the whole command fails before writing.
    assert result.exit_code == 2 and not out.exists()
    result = invoke(
        model, "-o", out, "--target-macs", "0.7", "--round-to", "8", "--exclude", first_conv,
        "--report", report, "--latency-runs", "0",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["after"]["macs"] <= 0.7 * data["before"]["macs"]
    assert any(g["status"] == "excluded" for g in data["groups"])
    for g in data["groups"]:
        if g["status"] == "pruned":
            assert g["kept"] % 8 == 0


def test_group_ratio_prunes_the_groups_the_named_layers_produce(model):
    result = prune(model, group_ratios={"/down/*": 0.5}, round_to=1, dry_run=True)
    pruned = {g.name: g.kept for g in result.report.groups if g.status == "pruned"}
    assert pruned == {"/down/conv/Conv": 32}  # not the stem group that /down/conv reads


def test_api_in_memory_and_pass_composes_in_a_pipeline(model):
    loaded = load_model(model)
    result = prune(loaded, ratio=0.25, latency_runs=0)
    assert result.output is None and result.after["macs"] < result.before["macs"]
    # As a pass in a pipeline: prune, then the exact folds.
    pipeline = run_pipeline(load_model(model), [PrunePass(PruneOptions("l2", 0.25)), "fold-batchnorm", "remove-unused"])
    assert [r.name for r in pipeline.records][0] == "prune" and pipeline.records[0].modified
    assert pipeline.records[0].params_after < pipeline.records[0].params_before


def test_nothing_to_remove_leaves_the_model_unmodified_and_runs_are_deterministic(model):
    loaded = load_model(model)
    before = stats.summarize(loaded)["parameters"]
    result = PrunePass(PruneOptions("l1", 0.0))(loaded)
    assert not result.modified and stats.summarize(loaded)["parameters"] == before
    assert not PrunePass(PruneOptions("l1", 0.5, dry_run=True))(loaded).modified
    a, b = PrunePass(PruneOptions("l1", 0.4))(load_model(model)), PrunePass(PruneOptions("l1", 0.4))(load_model(model))
    assert {k: v.tolist() for k, v in a.plan.keep.items()} == {k: v.tolist() for k, v in b.plan.keep.items()}


def test_pass_options_are_checked_when_built():
    with pytest.raises(UsageError, match="--min-channels"):
        PrunePass(PruneOptions("l1", 0.3, min_channels=0))
    with pytest.raises(UsageError, match="unknown criterion"):
        PrunePass(PruneOptions("magic", 0.3))


def control_flow_model(path: Path) -> Path:
    """Conv-Relu-Conv-Relu-Conv, and an If whose branches read the second Relu's output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node(op, ["r2"], [f"{name}_out"], name=f"{name}_{op}")], name, [], [out])

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", keepdims=0),
        helper.make_node("Greater", ["m", "zero"], ["cond"], name="positive"),
        helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=branch("then", "Relu"),
                         else_branch=branch("else", "Sigmoid")),
    ]
    inits = [weight("w1", 16, 3, 3, 3), weight("b1", 16), weight("w2", 16, 16, 3, 3), weight("b2", 16),
             weight("w3", 4, 16, 1, 1), numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph = helper.make_graph(
        nodes, "control_flow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_control_flow_is_named_in_the_report_and_the_output(tmp_path):
    path = control_flow_model(tmp_path / "if.onnx")
    out, report = tmp_path / "pruned.onnx", tmp_path / "report.json"
    result = invoke(path, "-o", out, "--ratio", "0.5", "--round-to", "1", "--latency-runs", "0", "--report", report)
    assert result.exit_code == 0, result.output
    note = ("1 control-flow node (If, e.g. 'branch'): subgraphs are left as they are (nothing inside them "
            "is pruned, and channels they read are kept)")
    assert f"note: {note}" in result.output
    data = json.loads(report.read_text())
    assert data["notes"] == [note]
    groups = {g["name"]: g for g in data["groups"]}
    assert groups["conv1"]["status"] == "pruned" and groups["conv1"]["kept"] == 8
    assert groups["conv2"]["status"] == "declined"  # read by the If's branches
    assert "channels are used inside a subgraph (Relu 'then_Relu')" in groups["conv2"]["reason"]
    pruned = load_model(out)
    check_model(pruned, full=True)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    assert runtime.run(pruned, feeds)["z"].shape == (1, 16, 8, 8)


def test_no_control_flow_no_note(model):
    assert not any("control-flow" in note for note in prune(model, ratio=0.3, latency_runs=0).report.notes)
