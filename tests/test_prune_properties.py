"""Properties of analysis + rewrite on random graphs (``tests/graphgen.py``).

Groups are complete: pruning random channel subsets of every prunable group always gives a
valid model with the original output shapes whose outputs equal the original's with those
channels masked at their consumers; and pruning all-zero filters never changes the outputs.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphgen
from onnxprune.errors import OnnxPruneError
from onnxprune.passes.prune import fold
from onnxprune.passes.prune.analysis import analyze
from onnxprune.passes.prune.group import PrunePlan
from onnxprune.passes.prune.rewrite import apply_plan
from onnxprune.validate import check_model
from test_prune_architectures import _zero_channels
from test_prune_rewrite import assert_close, masked, outputs, random_plan

# More examples than the profile's default (these are the core completeness properties and
# take ~0.05 s each); the dev profile's larger count still applies.
SETTINGS = settings(
    max_examples=max(100, settings().max_examples),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _output_shapes(model, feeds) -> dict[str, tuple[int, ...]]:
    return {name: tuple(v.shape) for name, v in zip((o.name for o in model.graph.outputs), outputs(model, feeds))}


@SETTINGS
@given(graph=graphgen.graphs(), share=st.floats(0.1, 0.9), seed=st.integers(0, 2**16))
def test_random_plans_keep_models_valid_and_equal_to_masking(graph, share, seed):
    model = graph.model()
    groups = analyze(model)
    assert all(g.prunable or g.declined for g in groups)
    plan = random_plan(groups, np.random.default_rng(seed), share)
    want = outputs(masked(model, plan), graph.feeds)
    apply_plan(model, groups, plan)
    check_model(model, full=True)
    assert _output_shapes(model, graph.feeds) == graph.output_shapes
    assert_close(outputs(model, graph.feeds), want, tol=1e-4)


@SETTINGS
@given(graph=graphgen.graphs(noise=True), seed=st.integers(0, 2**16))
def test_noisy_graphs_prune_or_decline_cleanly(graph, seed):
    """Graphs with Identity/Dropout, computed weights, runtime-built flatten shapes: the
    analysis declines what it cannot prove, and what it prunes stays valid."""
    model = graph.model()
    groups = analyze(model)
    plan = random_plan(groups, np.random.default_rng(seed), 0.5)
    try:
        apply_plan(model, groups, plan)
    except OnnxPruneError as exc:  # pragma: no cover - would be a bug in a random plan
        raise AssertionError(f"a valid plan was refused: {exc}") from exc
    check_model(model, full=True)
    assert _output_shapes(model, graph.feeds) == graph.output_shapes


@SETTINGS
@given(graph=graphgen.conv_graphs(), seed=st.integers(0, 2**16))
def test_pruning_zero_filters_is_lossless(graph, seed):
    model = graph.model()
    groups = analyze(model)
    order = {id(node): i for i, node in enumerate(model.graph)}
    rng = np.random.default_rng(seed)
    keep = {}
    for g in groups:
        per = g.size // g.divisions
        if not g.prunable or per < 2:
            continue
        count = int(rng.integers(1, per))
        parts = [rng.choice(per, count, replace=False) + j * per for j in range(g.divisions)]
        channels = np.sort(np.concatenate(parts))
        _zero_channels(g, channels)
        # a constant reaching a padded conv is not foldable exactly: those groups are left
        if fold.plan_fold(g, channels, order).exact == len(channels):
            keep[g.id] = np.setdiff1d(np.arange(g.size), channels)
    want = outputs(model, graph.feeds)
    apply_plan(model, groups, PrunePlan(keep))
    assert_close(outputs(model, graph.feeds), want, tol=1e-5)
