"""Calibration statistics collected by several workers (see onnxprune.distributed).

The samples are cut into ranges of whole batches of the plan's batch size, so each worker
runs exactly the batches one process would, with the same histogram sampling stride (the
plan is made once, from the whole dataset). Statistics of batches merge exactly (integer
counts on a grid fixed by the final range, exact min/max), so the merged statistics, and
every table computed from them, equal those of one pass bit for bit.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxprune.calibration.data import Dataset
from onnxprune.calibration.plan import Plan, run_plan
from onnxprune.calibration.statistics import Statistics
from onnxprune.distributed import Executor, Task, sample_ranges


def collect_sharded(model: ir.Model, dataset: Dataset, plan: Plan, executor: Executor, progress: bool) -> Statistics:
    ranges = sample_ranges(len(dataset), plan.batch, executor.workers)
    units = [(plan, dataset.subset(start, stop)) for start, stop in ranges]
    task = Task(collect_unit, units, {"model": model}, sizes=[stop - start for start, stop in ranges],
                desc="calibrating", progress=progress)
    stats = plan.statistics(0)
    for part in executor.run(task):  # in sample order
        stats.merge(part)
    stats.execution = executor.report
    return stats


def collect_unit(models: dict[str, ir.Model], unit: tuple[Plan, Dataset]) -> Statistics:
    """One range of samples on a worker (a pure function of the model and the unit)."""
    plan, dataset = unit
    dataset.attach(models["model"])
    return run_plan(models["model"], dataset, plan)
