"""The planner: global/per-group ratios, constraints, cost model, target search, exclusions."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune import load_model, stats
from onnxprune.api.prune_api import PREPARE
from onnxprune.errors import UsageError
from onnxprune.passes.prune.analysis import analyze
from onnxprune.passes.prune.group import Group, PrunePlan, Role
from onnxprune.passes.prune.importance import Magnitude, normalize
from onnxprune.passes.prune.planner import (
    CostModel,
    make_candidates,
    match_groups,
    plan_at,
    search_ratio,
)
from onnxprune.passes.prune.rewrite import apply_plan
from onnxprune.pipeline import run_pipeline
from test_prune_importance import toy_groups, toy_model
from zoo import ARCHITECTURES, export


def bare(gid: int, size: int, **attrs) -> Group:
    group = Group(gid, size)
    for k, v in attrs.items():
        setattr(group, k, v)
    return group


def test_global_ratio_ranks_channels_of_all_groups_together():
    groups = [bare(0, 4), bare(1, 4)]
    scores = {0: np.array([0.1, 2.0, 0.2, 1.7]), 1: np.array([1.0, 1.1, 0.9, 1.0])}
    plan = plan_at(make_candidates(groups, scores), 0.25)
    # The two lowest scores of all eight channels are both in group 0.
    np.testing.assert_array_equal(plan.keep[0], [1, 3])
    assert 1 not in plan.keep


def test_uniform_ratio_prunes_each_group_locally():
    groups = [bare(0, 4), bare(1, 4)]
    scores = {0: np.array([0.1, 2.0, 0.2, 1.7]), 1: np.array([1.0, 1.1, 0.9, 1.0])}
    plan = plan_at(make_candidates(groups, scores), 0.25, uniform=True)
    np.testing.assert_array_equal(plan.keep[0], [1, 2, 3])
    np.testing.assert_array_equal(plan.keep[1], [0, 1, 3])


def test_per_group_ratio_overrides_the_global_pool():
    groups = [bare(0, 4), bare(1, 4)]
    scores = {0: np.array([0.1, 2.0, 0.2, 1.7]), 1: np.array([1.0, 1.1, 0.9, 1.0])}
    plan = plan_at(make_candidates(groups, scores, group_ratios={1: 0.5}), 0.0)
    assert 0 not in plan.keep
    np.testing.assert_array_equal(plan.keep[1], [0, 1])


def test_min_channels_and_never_all_removed():
    groups = [bare(0, 8)]
    scores = {0: np.arange(8.0)}
    assert len(plan_at(make_candidates(groups, scores), 1.0).keep[0]) == 1
    plan = plan_at(make_candidates(groups, scores, min_channels=3), 0.9)
    np.testing.assert_array_equal(plan.keep[0], [5, 6, 7])
    with pytest.raises(UsageError, match="--min-channels"):
        make_candidates(groups, scores, min_channels=0)


def test_kept_counts_round_up_to_a_multiple():
    groups = [bare(0, 32), bare(1, 6)]
    scores = {0: np.arange(32.0), 1: np.arange(6.0)}
    plan = plan_at(make_candidates(groups, scores, round_to=8), 0.3, uniform=True)
    assert len(plan.keep[0]) == 24  # 32 - 9 = 23 kept -> 24
    assert 1 not in plan.keep  # 6 channels cannot be a multiple of 8 below 6: kept whole
    plan = plan_at(make_candidates(groups, scores, round_to=8), 0.99, uniform=True)
    assert len(plan.keep[0]) == 8


def test_grouped_conv_keeps_equal_counts_per_conv_group():
    groups = [bare(0, 8, divisions=2)]
    scores = {0: np.array([5, 4, 3, 2, 9, 8, 7, 6.0])}
    # Globally the 3 lowest are all in the first half; the constraint splits the cut.
    plan = plan_at(make_candidates(groups, scores), 0.3)
    kept = plan.keep[0]
    assert len(kept) == 6 and (kept < 4).sum() == 3
    np.testing.assert_array_equal(kept, [0, 1, 2, 4, 5, 6])


def test_declined_excluded_and_tiny_groups_are_not_candidates():
    declined = bare(0, 4, declined="reaches graph output")
    groups = [declined, bare(1, 4), bare(2, 1), bare(3, 4)]
    scores = {i: np.ones(4) for i in range(4)}
    cands = make_candidates(groups, scores, excluded={3})
    assert [c.group.id for c in cands] == [1]


def test_ratio_zero_is_an_empty_plan():
    groups = [bare(0, 4)]
    assert plan_at(make_candidates(groups, {0: np.ones(4)}), 0.0).keep == {}


def test_cost_model_matches_stats_of_the_sliced_model():
    model = toy_model()
    g0, g1 = toy_groups(model)
    cost = CostModel(model, [g0, g1])
    before = stats.summarize(model)
    assert (cost.macs, cost.params) == (before["macs"], before["parameters"])
    plan = PrunePlan({0: np.array([1, 3]), 1: np.array([0, 2, 3])})
    macs, params = cost.estimate(plan)
    layers = {layer["node"]: layer["macs"] for layer in before["layers"]}
    expected_macs = (
        layers["c1"] * 2 / 4  # c1 loses half of its filters
        + layers["c2"] * (2 / 4) * (3 / 4)  # c2 loses half its inputs and a quarter of its filters
        + layers["c3"] * 3 / 4
        + layers["fc"] * 3 / 4
    )
    assert macs == round(expected_macs)
    removed = 2 * 27 + 2 + 4 * 2 + (16 - 2 * 3) + 3 + 2  # W1 rows, B1, BN x4, W2, W3, Wf column
    assert params == before["parameters"] - removed


def test_target_macs_search_finds_the_smallest_ratio_reaching_it():
    model = toy_model()
    groups = toy_groups(model)
    cost = CostModel(model, groups)
    scores = {g.id: np.array([1.0, 2.0, 3.0, 4.0]) for g in groups}
    cands = make_candidates(groups, scores)
    ratio, plan = search_ratio(cands, cost, target_macs=0.7)
    macs, _ = cost.estimate(plan)
    assert macs <= 0.7 * cost.macs
    # One channel fewer removed would miss the target: the search does not overshoot.
    smaller = plan_at(cands, ratio - 1 / 8)
    assert cost.estimate(smaller)[0] > 0.7 * cost.macs
    _, plan = search_ratio(cands, cost, target_params=0.9)
    assert cost.estimate(plan)[1] <= 0.9 * cost.params


def test_unreachable_or_invalid_targets_are_usage_errors():
    model = toy_model()
    groups = toy_groups(model)
    cost = CostModel(model, groups)
    cands = make_candidates(groups, {g.id: np.ones(4) for g in groups})
    with pytest.raises(UsageError, match="out of reach"):
        search_ratio(cands, cost, target_macs=0.01)
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        search_ratio(cands, cost, target_macs=1.5)
    with pytest.raises(UsageError, match="exactly one"):
        search_ratio(cands, cost)


def test_exclusions_by_name_and_glob_and_a_typo_is_an_error():
    model = toy_model()
    groups = toy_groups(model)
    assert match_groups(model, groups, ["c1"]) == {"c1": {0}}
    assert match_groups(model, groups, ["c*"])["c*"] == {0, 1}
    assert match_groups(model, groups, ["fc"])["fc"] == {1}
    with pytest.raises(UsageError, match="'conv9' names no node"):
        match_groups(model, groups, ["conv9"])
    # c2 produces the residual group's channels and reads c1's: a ratio for 'c2' means the former.
    assert match_groups(model, groups, ["c2"]) == {"c2": {0, 1}}
    assert match_groups(model, groups, ["c2"], roles=[Role.PRODUCER]) == {"c2": {1}}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_cost_model_estimate_equals_the_rewritten_model_on_every_zoo_architecture(name):
    """The planner's MAC/parameter estimate is what apply_plan really produces."""
    model = load_model(export(name))
    run_pipeline(model, PREPARE)
    groups = analyze(model)
    active = [g for g in groups if g.prunable and g.size > 1]
    scores = {g.id: normalize(Magnitude(1)(g)) for g in active}
    plan = plan_at(make_candidates(active, scores), 0.4)
    for g in active:
        if g.id in plan.keep and g.divisions > 1:
            assert len(set(g.division_counts(plan.keep[g.id]))) == 1  # equal per conv group
    cost = CostModel(model, groups)
    estimate = cost.estimate(plan)
    apply_plan(model, groups, plan)
    after = stats.summarize(model)
    assert estimate == (after["macs"], after["parameters"])
