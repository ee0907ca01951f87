"""Splitting a run over samples into units.

Units are ranges of whole batches: a worker then runs exactly the batches a single process
would, so statistics that are sums over batches (calibration histograms, counts, min/max)
merge to the very same numbers.
"""

from __future__ import annotations

UNITS_PER_WORKER = 4  # more units than workers: balance, finer progress, cheaper retries


def sample_ranges(samples: int, batch: int, workers: int, per_worker: int = UNITS_PER_WORKER) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges covering ``samples``, each a whole number of batches
    (the last may be short), about ``per_worker`` units per worker, never empty."""
    if samples <= 0:
        return []
    batches = -(-samples // batch)
    units = max(1, min(batches, workers * per_worker))
    ranges = []
    for i in range(units):
        first, last = batches * i // units, batches * (i + 1) // units
        if last > first:
            ranges.append((first * batch, min(last * batch, samples)))
    return ranges
