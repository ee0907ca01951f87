"""What pruning changed, said plainly; unnamed nodes get names; the API takes what users pass
(issue 12, items 5, 8 and 12)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
MODEL, CALIB = DIGITS / "digits.onnx", DIGITS / "calib.npz"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory) -> Path:
    proto = onnx.load(MODEL)
    for node in proto.graph.node:
        node.name = ""
    path = tmp_path_factory.mktemp("unnamed") / "unnamed.onnx"
    onnx.save(proto, path)
    return path


def test_groups_list_members_and_removed_channels_in_table_and_report(tmp_path):
    report = tmp_path / "plan.json"
    result = run("prune", MODEL, "--dry-run", "--ratio", "0.3", "--round-to", "1", "--json", report)
    assert result.exit_code == 0, result.output
    groups = {g["name"]: g for g in json.loads(report.read_text())["groups"]}
    stem = groups["/stem/conv/Conv"]
    assert stem["members"] == ["/stem/conv/Conv", "/block/conv2/Conv"]  # tied through the residual Add
    assert "/block/conv1/Conv" in stem["readers"]
    assert len(stem["removed"]) == stem["channels"] - stem["kept"] > 0
    assert all(0 <= i < stem["channels"] for i in stem["removed"])
    line = next(line for line in result.output.splitlines() if line.startswith("/stem/conv/Conv"))
    assert "/block/conv2/Conv" in line  # the other member, in the table too
    first = stem["removed"][0]
    assert str(first) in line.split("/block/conv2/Conv")[1]


def test_group_ratio_on_a_residual_member_says_which_group_it_acts_on():
    result = run("prune", MODEL, "--dry-run", "--ratio", "0.2", "--group-ratio", "/block/conv2/Conv=0.5")
    assert result.exit_code == 0, result.output
    assert ("--group-ratio '/block/conv2/Conv=0.5' acts on group /stem/conv/Conv, which couples "
            "/stem/conv/Conv, /block/conv2/Conv") in result.output


@pytest.mark.parametrize("ratio, said", [("0.05", "--ratio 0.05 removed no channel: --round-to 8"),
                                         ("0.3", "--ratio 0.3 removed 20.8% of the channels: --round-to 8")])
def test_round_to_undoing_or_bending_a_ratio_is_said(ratio, said):
    result = run("prune", MODEL, "--dry-run", "--ratio", ratio)
    assert result.exit_code == 0 and said in result.output, result.output
    exact = run("prune", MODEL, "--dry-run", "--ratio", ratio, "--round-to", "1")
    assert exact.exit_code == 0 and "--round-to 8" not in exact.output, exact.output


def test_unnamed_nodes_get_stable_names_to_show_and_exclude(unnamed, tmp_path):
    info = onnxprune.inspect(unnamed)
    layers = [layer["node"] for layer in info["layers"]]
    assert layers[:2] == ["Conv_0", "Conv_1"] and all(layers)
    assert info == onnxprune.inspect(unnamed)  # stable from one load to the next
    result = run("prune", unnamed, "--dry-run", "--ratio", "0.3", "--exclude", "Conv_0", "--all-groups")
    assert result.exit_code == 0, result.output
    assert "group0" not in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("Conv_0"))
    assert "excluded" in line


def test_api_takes_a_model_proto_and_an_exclude_string():
    proto = onnx.load(MODEL)
    result = onnxprune.prune(proto, ratio=0.3, dry_run=True, exclude="/fc/Gemm", latency_runs=0)
    assert result.report.groups and len(repr(result)) < 1000  # not the whole graph
    quantized = onnxprune.quantize(MODEL, calib=CALIB, samples=32, exclude="/fc/Gemm")
    assert quantized.declined == {"/fc/Gemm": "excluded"} and len(repr(quantized)) < 1500
    checked = onnxprune.check(proto, proto, providers=["cpu"])
    assert checked and len(repr(checked)) < 1500


def test_bn_criterion_on_a_folded_model_is_refused():
    folded = onnxprune.optimize(MODEL).model
    with pytest.raises(onnxprune.OnnxPruneError, match="criterion 'bn' needs BatchNormalization"):
        onnxprune.prune(folded, ratio=0.3, criterion="bn", dry_run=True, latency_runs=0)


def test_compress_with_bn_scores_the_batchnorms_then_folds_them():
    result = onnxprune.compress(MODEL, calib=CALIB, eval_data=DIGITS / "eval.npz", criterion="bn",
                                target_macs=0.7, quantize_model=False)
    report = result.stages[1].result.report
    pruned = [g for g in report.groups if g.status == "pruned"]
    assert pruned and not any("scored by l1" in (g.reason or "") for g in pruned)
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph)  # folded after
    assert result, result.check.failures


def test_check_auto_preset_reads_the_pruning_metadata(tmp_path):
    pruned = tmp_path / "pruned.onnx"
    onnxprune.prune(MODEL, pruned, target_macs=0.6, calib=CALIB, latency_runs=0)
    result = run("check", MODEL, pruned, "--data", DIGITS / "eval.npz", "--providers", "cpu")
    assert result.exit_code == 0 and "preset pruned" in result.output, result.output
    exact = run("check", MODEL, pruned, "--data", DIGITS / "eval.npz", "--providers", "cpu", "--preset", "exact")
    assert exact.exit_code == 1, exact.output
