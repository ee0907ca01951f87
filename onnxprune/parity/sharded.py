"""A parity check shared by several workers (see onnxprune.distributed).

Each worker opens the sessions once per range of samples (ranges of whole batches: the very
batches, labels and random seeds of one pass) and returns its streaming statistics; they are
merged in sample order with ``OutputStats.merge``.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from onnxprune.distributed import Executor, Task, sample_ranges
from onnxprune.errors import UsageError
from onnxprune.parity.comparison import Comparison, compare_batches
from onnxprune.parity.inputs import Feed
from onnxprune.parity.tolerances import Tolerances


def compare_sharded(reference: ir.Model, candidate: ir.Model, feed: Feed, providers: list[str],
                    tolerances: Tolerances, require_providers: bool, options: Mapping, *, seed: int,
                    progress: bool, executor: Executor) -> tuple[list[Comparison], list[dict], dict]:
    ranges = sample_ranges(feed.samples, feed.batch_size, executor.workers)
    units = [(feed.part(start, stop), tuple(providers), tolerances, require_providers, dict(options), seed)
             for start, stop in ranges]
    task = Task(compare_unit, units, {"reference": reference, "candidate": candidate},
                sizes=[stop - start for start, stop in ranges], desc="check", progress=progress)
    parts = executor.run(task)
    comparisons, failed, placement = parts[0]  # placement: the first worker's (same model, same EPs)
    for other, _, _ in parts[1:]:
        if [c.name for c in other] != [c.name for c in comparisons]:
            raise UsageError("the workers could not all open the same execution providers: "
                             f"{[c.name for c in comparisons]} vs {[c.name for c in other]}")
        for mine, theirs in zip(comparisons, other):
            for name, stats in mine.stats.items():
                stats.merge(theirs.stats[name])
    return comparisons, failed, placement


def compare_unit(models: dict[str, ir.Model], unit):
    """One range of samples on a worker (a pure function of the models and the unit)."""
    part, providers, tolerances, require_providers, options, seed = unit
    batches = part.batches(models["reference"])
    return compare_batches(models["reference"], models["candidate"], batches, list(providers), tolerances,
                           require_providers, options, seed=seed)
