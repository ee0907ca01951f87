"""Structured pruning on real exported architectures (``tests/zoo.py``).

For every architecture: what the analysis finds (prunable groups, reasons for the others),
that random plans give valid models equal to the masked original, and that pruning
channels with all-zero filters is lossless (the removed channels' constants are folded).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxprune import runtime
from onnxprune.graphutils import const_array, set_initializer
from onnxprune.passes.prune import fold
from onnxprune.passes.prune.analysis import analyze
from onnxprune.passes.prune.group import Group, PrunePlan, Role
from onnxprune.passes.prune.rewrite import apply_plan
from onnxprune.pipeline import DEFAULT_PIPELINE, run_pipeline
from test_prune_rewrite import assert_close, check_pruned, outputs, zero_filters

# name: (groups, prunable, grouped-conv groups, substrings of the declined reasons)
EXPECTED = {
    "resnet_basic": (5, 4, 0, ["graph output 'output'"]),
    "resnet_bottleneck": (7, 6, 0, ["graph output"]),
    "resnext": (7, 6, 4, ["graph output"]),
    "mobilenet_v2": (6, 5, 0, ["graph output"]),
    "mobilenet_v3": (9, 8, 0, ["graph output"]),
    "efficientnet": (9, 8, 0, ["graph output"]),
    "densenet": (13, 12, 0, ["graph output"]),
    "squeezenet": (11, 10, 0, ["graph output"]),
    "shufflenet": (10, 5, 0, ["channel shuffle", "only known at runtime", "graph output"]),
    "vgg": (5, 4, 0, ["graph output"]),
    "unet": (13, 12, 0, ["graph output"]),
    "transformer": (5, 1, 0, ["splits or merges the channel axis", "graph input", "normalises across"]),
    "se_block": (3, 2, 0, ["graph output"]),
    "concat_block": (3, 2, 0, ["graph output"]),
    "transformer_mlp": (2, 1, 0, ["graph output"]),
}
ARCHITECTURES = list(EXPECTED)


@pytest.fixture(scope="module")
def zoo_models(zoo):
    """name -> a loader of a fresh copy (tests prune in place; the cached file stays untouched)."""
    return lambda name: ir.load(zoo.export(name))


def test_every_zoo_architecture_is_covered(zoo):
    assert set(EXPECTED) == set(zoo.ARCHITECTURES)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_groups(zoo_models, name):
    count, prunable, grouped, reasons = EXPECTED[name]
    groups = analyze(zoo_models(name))
    assert len(groups) == count
    assert sum(g.prunable for g in groups) == prunable
    assert sum(g.divisions > 1 for g in groups) == grouped
    declined = " | ".join(g.declined for g in groups if not g.prunable)
    for reason in reasons:
        assert reason in declined
    for g in groups:
        assert g.by_role(Role.ACTIVATION) and g.origin is not None
        if g.prunable:
            assert g.by_role(Role.PRODUCER)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_random_plans_give_valid_models_equal_to_masking(zoo_models, name):
    lines = check_pruned(zoo_models(name), plan_share=0.5, seed=1)
    assert len(lines) == EXPECTED[name][1]


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v3", "densenet", "shufflenet", "transformer"])
def test_after_the_cleanup_pipeline(zoo_models, name):
    """The default clean-up folds BatchNorm into convs and BN after Concat into Mul/Add."""
    model = run_pipeline(zoo_models(name), DEFAULT_PIPELINE).model
    check_pruned(model, plan_share=0.4, seed=2)


def test_dynamic_batch(zoo):
    model = ir.load(zoo.export("mobilenet_v2", dynamic_batch=True))
    groups = analyze(model)
    apply_plan(model, groups, PrunePlan({g.id: np.arange(0, g.size, 2) for g in groups if g.prunable}))
    x = zoo.sample_input("mobilenet_v2", batch=3)
    assert runtime.run(model, {"input": x})["output"].shape == (3, 10)


def _removed_subsets(groups: list[Group], rng) -> dict[int, np.ndarray]:
    chosen = {}
    for g in groups:
        per = g.size // g.divisions
        if g.prunable and per > 1:
            count = int(rng.integers(1, per))
            chosen[g.id] = np.sort(np.concatenate(
                [rng.choice(per, count, replace=False) + j * per for j in range(g.divisions)]))
    return chosen


def _zero_channels(group: Group, channels: np.ndarray) -> None:
    """Zero the channels' producer filters and biases, and the shift of a BatchNorm right
    after a producer: the channels are then exactly 0 after it (nonzero again after a
    later BN or a gate), so every fold is exact."""
    for slot in group.by_role(Role.PRODUCER):
        array = const_array(slot.value).copy()
        np.moveaxis(array, slot.axis, 0)[slot.indices(channels, group.size)] = 0
        set_initializer(slot.value, array)
    producers = {id(s.node) for s in group.by_role(Role.PRODUCER)}
    for slot in group.by_role(Role.PARAM):
        bn = slot.node
        after_producer = bn.inputs[0].producer() is not None and id(bn.inputs[0].producer()) in producers
        if bn.op_type == "BatchNormalization" and after_producer and slot.value in (bn.inputs[2], bn.inputs[3]):
            array = const_array(slot.value).copy()
            array[slot.indices(channels, group.size)] = 0
            set_initializer(slot.value, array)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_pruning_all_zero_filters_is_lossless(zoo_models, zoo, name):
    model = zoo_models(name)
    groups = analyze(model)
    chosen = _removed_subsets(groups, np.random.default_rng(3))
    for g in groups:
        if g.id in chosen:
            _zero_channels(g, chosen[g.id])
    feeds = {"input": zoo.sample_input(name)}
    want = outputs(model, feeds)
    plan = PrunePlan({gid: np.setdiff1d(np.arange(groups[gid].size), ch) for gid, ch in chosen.items()})
    apply_plan(model, groups, plan)
    assert_close(outputs(model, feeds), want, tol=1e-5)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_nonzero_constant_channels_fold_exactly(zoo_models, zoo, name):
    """Filters zeroed, BN shifts kept: the channels are nonzero constants. Groups whose
    consumers see them without padding fold exactly; those groups alone are pruned."""
    model = zoo_models(name)
    groups = analyze(model)
    order = {id(node): i for i, node in enumerate(model.graph)}
    chosen = _removed_subsets(groups, np.random.default_rng(4))
    exact, folded = {}, 0
    for g in groups:
        if g.id not in chosen:
            continue
        saved = {id(s.value): (s.value, const_array(s.value)) for s in g.by_role(Role.PRODUCER)}
        zero_filters(g, chosen[g.id])
        plan = fold.plan_fold(g, chosen[g.id], order)
        if plan.exact == len(chosen[g.id]):
            exact[g.id] = chosen[g.id]
            folded += bool(plan.deltas)
        else:  # not exactly foldable: restore the filters, leave the group alone
            for value, array in saved.values():
                set_initializer(value, array)
    assert folded >= 1  # every architecture has some nonzero constant folded exactly
    feeds = {"input": zoo.sample_input(name)}
    want = outputs(model, feeds)
    plan = PrunePlan({gid: np.setdiff1d(np.arange(groups[gid].size), ch) for gid, ch in exact.items()})
    lines = apply_plan(model, groups, plan)
    assert all("folded exactly" in line for line in lines if "constant" in line)
    assert_close(outputs(model, feeds), want, tol=1e-5)
