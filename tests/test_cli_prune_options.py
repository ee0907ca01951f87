"""One options object for the prune stage: :class:`PruneOptions` against the command line
(every field a flag, the same defaults, so they cannot drift), ``prune()``'s keywords and
``compress(prune_options=...)``."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune.api import prune_api
from onnxprune.cli import cli
from onnxprune.errors import UsageError
from onnxprune.passes.prune import DEFAULT_ROUND_TO, PruneOptions

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits"
MODEL, EVAL = DIGITS / "digits.onnx", DIGITS / "eval.npz"
prune_cmd = importlib.import_module("onnxprune.cli.prune_cmd")  # the module (the package's name is the command)

# Field -> the flag's parameter name, where they differ (--group-ratio is repeated, one a flag).
PARAMETER = {"group_ratios": "group_ratio"}
# Fields with no flag of `onnxprune prune`: none today. Add one here with a comment saying why.
NOT_ON_THE_COMMAND_LINE: set[str] = set()
# How the command turns a flag's value into the field's (repeatable flags give tuples).
CONVERT = {"group_ratios": prune_cmd._group_ratios, "exclude": lambda v: tuple(prune_cmd.split_lists(v))}


def test_every_field_is_a_flag_of_prune_with_the_same_default():
    ctx = prune_cmd.prune_cmd.make_context("prune", [str(MODEL)], resilient_parsing=True)
    params = {p.name for p in prune_cmd.prune_cmd.params}
    for field in dataclasses.fields(PruneOptions):
        if field.name in NOT_ON_THE_COMMAND_LINE:
            continue
        name = PARAMETER.get(field.name, field.name)
        assert name in params, f"PruneOptions.{field.name} has no flag on `onnxprune prune`"
        value = CONVERT.get(field.name, lambda v: v)(ctx.params[name])
        assert value == PruneOptions.default(field.name), field.name
    assert PruneOptions.default("round_to") == DEFAULT_ROUND_TO


def test_compress_shares_the_defaults_of_the_flags_it_has():
    compress_cmd = importlib.import_module("onnxprune.cli.compress_cmd").compress_cmd
    ctx = compress_cmd.make_context("compress", [str(MODEL), "-o", "x.onnx"], resilient_parsing=True)
    shared = {"criterion", "ratio", "target_macs", "target_params", "round_to"}
    assert shared <= set(ctx.params)
    for name in shared:
        assert ctx.params[name] == PruneOptions.default(name), name
    assert tuple(ctx.params["exclude"]) == PruneOptions.default("exclude")


def _options_of(monkeypatch, args: list[str]) -> PruneOptions:
    """The PruneOptions `onnxprune prune` hands to prune() for ``args``."""
    seen = []

    def capture(model, output, *, options, **rest):
        seen.append(options)
        raise UsageError("captured")

    monkeypatch.setattr(prune_cmd, "prune", capture)
    result = CliRunner().invoke(cli, ["prune", str(MODEL), "--dry-run", *args])
    assert "captured" in result.output, result.output
    return seen[0]


def test_the_command_line_builds_the_options_from_every_flag(monkeypatch):
    assert _options_of(monkeypatch, ["--ratio", "0.3"]) == PruneOptions(ratio=0.3, dry_run=True)
    args = ["--target-macs", "0.6", "--criterion", "l2", "--uniform", "--group-ratio", "a*=0.5",
            "--round-to", "4", "--min-channels", "2", "--exclude", "x,y", "--no-compensate",
            "--reconstruct", "--refit-inputs", "pruned"]
    expected = PruneOptions(
        criterion="l2", target_macs=0.6, uniform=True, group_ratios={"a*": 0.5}, round_to=4, min_channels=2,
        exclude=("x", "y"), compensate=False, reconstruct=True, refit_inputs="pruned", dry_run=True)
    assert _options_of(monkeypatch, args) == expected


@pytest.mark.parametrize("fields, message", [
    ({}, "say how much to prune"),
    ({"ratio": 0.3, "target_macs": 0.5}, "give only one of"),
    ({"ratio": 1.0}, r"must be in \[0, 1\)"),
    ({"target_params": 1.5}, r"--target-params is the share to keep"),
    ({"group_ratios": {"a": -0.1}}, "ratio of 'a'"),
    ({"ratio": 0.3, "criterion": "magic"}, "unknown criterion 'magic'"),
    ({"ratio": 0.3, "refit_inputs": "both"}, "--refit-inputs must be"),
    ({"ratio": 0.3, "round_to": 0}, "--round-to must be at least 1"),
])
def test_bad_values_are_refused_when_the_options_are_made(fields, message):
    with pytest.raises(UsageError, match=message):
        PruneOptions(**fields)


def test_one_name_is_excluded_whole_and_the_options_are_frozen():
    options = PruneOptions(ratio=0.3, exclude="/fc/Gemm")
    assert options.exclude == ("/fc/Gemm",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.ratio = 0.5  # type: ignore[misc]
    with pytest.raises(UsageError, match="must be in"):
        options.replace(ratio=2.0)  # replacing validates again


def test_prune_takes_keywords_or_options_alike():
    keywords = onnxprune.prune(MODEL, ratio=0.3, criterion="l2", round_to=1, dry_run=True, latency_runs=0)
    options = PruneOptions(ratio=0.3, criterion="l2", round_to=1, dry_run=True)
    given = onnxprune.prune(MODEL, options=options, latency_runs=0)
    assert keywords.report.to_dict() == given.report.to_dict()
    assert keywords.report.criterion == "l2"
    recorded = json.loads(json.dumps(keywords.to_dict()))["options"]  # the report says what was asked
    assert recorded == {**dataclasses.asdict(options), "exclude": []}
    replaced = onnxprune.prune(MODEL, options=options, ratio=0.5, latency_runs=0)  # a keyword replaces a field
    assert replaced.report.ratio == 0.5 and replaced.report.criterion == "l2"
    with pytest.raises(TypeError, match="unexpected keyword argument 'rato'"):
        onnxprune.prune(MODEL, rato=0.3)


def test_compress_hands_its_prune_options_to_the_prune_stage(monkeypatch):
    seen = []
    real = prune_api.prune

    def spy(model, *args, **kwargs):
        seen.append(kwargs["options"])
        return real(model, *args, **kwargs)

    monkeypatch.setattr(importlib.import_module("onnxprune.compress"), "prune", spy)
    given = PruneOptions(target_macs=0.7, round_to=1, criterion="l2")
    result = onnxprune.compress(MODEL, eval_data=EVAL, quantize_model=False, prune_options=given)
    assert [s.name for s in result.stages] == ["optimize", "prune"] and seen == [given]
    # The keywords say how much (and which criterion) over the options' own; a mapping's
    # PruneOptions fields join them; no criterion named: prune's default for the data (l1 here,
    # without calibration data; thinet with it).
    result = onnxprune.compress(MODEL, eval_data=EVAL, quantize_model=False, prune_options={"round_to": 1}, ratio=0.2)
    assert seen[-1] == PruneOptions(ratio=0.2, round_to=1) and result.stages[1].result.report.criterion == "l1"


def test_compress_keywords_say_how_much_over_the_options_own():
    from onnxprune.compress import _prune_options

    given = PruneOptions(target_macs=0.7, round_to=1, criterion="l2")
    assert _prune_options(given, None, 0.2, None, None) == PruneOptions(ratio=0.2, round_to=1, criterion="l2")
    assert _prune_options(given, "bn", None, None, None) == given.replace(criterion="bn")
    assert _prune_options({"round_to": 1, "batch_size": 8}, None, None, None, None) is None  # nothing to prune
