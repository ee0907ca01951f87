"""Fuzzing the public ``prune`` API end to end (prepare, plan, rewrite, fold) on random graphs.

Random ratios, criteria and options: the result is a model that passes the ONNX checker and
runs in ONNX Runtime with the original output shapes, or a project error (OnnxPruneError)
- never another exception. (tests/test_prune_properties.py holds the rewrite itself to
exactness on masked channels; this covers the whole command path.)
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import graphgen
from onnxprune import prune, runtime
from onnxprune.errors import OnnxPruneError
from onnxprune.validate import check_model


@settings(max_examples=60)
@given(
    g=graphgen.graphs(noise=True),
    ratio=st.floats(0.0, 0.95),
    criterion=st.sampled_from(["l1", "l2", "bn"]),
    round_to=st.sampled_from([1, 2, 8]),
    uniform=st.booleans(),
    fold=st.booleans(),
)
def test_prune_gives_a_valid_model_or_a_clear_error(g, ratio, criterion, round_to, uniform, fold):
    try:
        result = prune(g.model(), ratio=ratio, criterion=criterion, round_to=round_to, uniform=uniform,
                       fold=fold, latency_runs=0)
    except OnnxPruneError:
        return
    check_model(result.model, full=True)
    outputs = runtime.run(result.model, g.feeds)
    assert {name: out.shape for name, out in outputs.items()} == g.output_shapes
    assert result.after["parameters"] <= result.before["parameters"] or fold is False


@settings(max_examples=30)
@given(g=graphgen.conv_graphs(), target=st.floats(0.2, 1.0))
def test_prune_to_a_mac_target(g, target):
    try:
        result = prune(g.model(), target_macs=target, round_to=1, latency_runs=0)
    except OnnxPruneError:
        return
    check_model(result.model)
    assert {k: v.shape for k, v in runtime.run(result.model, g.feeds).items()} == g.output_shapes
