"""Fuzzing: every registered pass, and the default pipeline, on random valid graphs.

The property: a pass either raises a project error (OnnxPruneError, a clear refusal) or
returns a model that passes the ONNX checker, runs in ONNX Runtime with the same output
shapes, and, for exact passes, the same outputs (max abs error / max |ref| <= 1e-4, see TOLERANCE).
Anything else (an unhandled exception, a broken model) is a bug in that pass.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphgen
from onnxprune import api, runtime
from onnxprune.errors import OnnxPruneError
from onnxprune.passes import PASSES, get_pass
from onnxprune.pipeline import DEFAULT_PIPELINE
from onnxprune.validate import check_model

# Random weights make outputs with heavy cancellation (a 1-unit Gemm over 192 features): the
# reordered float32 sums of folded weights then differ by ~1e-5 of max|ref| without any bug.
# Real networks are held to 1e-5 in the pass tests; a wrong fold shows up here as O(1).
TOLERANCE = 1e-4


def reference(g: graphgen.GeneratedGraph) -> dict[str, np.ndarray]:
    return runtime.run(g.model(), g.feeds)


def assert_valid_and_equal(model, g, expected, *, exact: bool, what: str) -> None:
    check_model(model, full=True)
    outputs = runtime.run(model, g.feeds)
    assert list(outputs) == list(expected), f"{what}: outputs renamed or reordered"
    for name, ref in expected.items():
        assert outputs[name].shape == ref.shape == g.output_shapes[name], f"{what}: shape of {name}"
        if exact:
            scale = max(float(np.max(np.abs(ref))), 1e-12) if ref.size else 1.0
            err = float(np.max(np.abs(outputs[name] - ref))) / scale if ref.size else 0.0
            assert err <= TOLERANCE, f"{what}: output {name} differs by {err:.3g}"


@pytest.mark.parametrize("name", sorted(PASSES))
@given(g=graphgen.graphs(noise=True))
def test_pass_on_random_graph_is_valid_and_exact(name, g):
    expected = reference(g)
    model = g.model()
    try:
        result = get_pass(name)(model)
    except OnnxPruneError:
        return  # a clear refusal is an allowed outcome
    assert_valid_and_equal(result.model, g, expected, exact=get_pass(name).exact, what=name)
    again = get_pass(name)(result.model)  # idempotent: a second run finds nothing to do
    assert not again.modified or name == "shape-inference", f"{name} is not idempotent: {again.changes}"


@settings(max_examples=60)
@given(g=graphgen.graphs(noise=True), passes=st.lists(st.sampled_from(sorted(PASSES)), max_size=6))
def test_any_pass_sequence_keeps_the_model_valid(g, passes):
    expected = reference(g)
    try:
        result = api.optimize(g.model(), passes=passes or DEFAULT_PIPELINE)
    except OnnxPruneError:
        return
    exact = all(get_pass(p).exact for p in passes or DEFAULT_PIPELINE)
    assert_valid_and_equal(result.model, g, expected, exact=exact, what=f"passes {passes}")


@given(g=graphgen.graphs(noise=True))
def test_default_pipeline_with_verify_never_crashes(g):
    try:
        result = api.optimize(g.model(), verify=True, feeds=[g.feeds])
    except OnnxPruneError:
        return
    assert_valid_and_equal(result.model, g, reference(g), exact=True, what="optimize --verify")
