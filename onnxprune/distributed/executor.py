"""Executors: where the units of a job run.

``SerialExecutor`` runs them here, one after the other (what a plain call does, but through
the same units: a test of the sharding itself). ``LocalExecutor(n)`` runs them on ``n``
worker processes of this machine; ``RayExecutor`` (ray_backend.py) on a Ray cluster. A
worker that dies mid-unit (killed, out of memory, node lost) has its units run again, up to
``retries`` times; a unit that raises an error does not (the data or model is at fault, and
would fail again), and the error reaches the caller as it was raised.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import onnx_ir as ir
from tqdm import tqdm

from onnxprune.distributed import local, worker
from onnxprune.errors import UsageError
from onnxprune.report import human, table

DEFAULT_RETRIES = 2  # a unit runs at most 1 + retries times


@dataclasses.dataclass
class Task:
    """A job: ``fn(models, unit)`` for every unit; ``fn`` must be a module-level function and
    units and results picklable. ``models`` {name: ir.Model or path} reach ``fn`` as loaded
    ir.Models; ``sizes`` (samples per unit) drive the progress bar."""

    fn: Callable
    units: Sequence
    models: Mapping[str, ir.Model | str | os.PathLike]
    sizes: Sequence[int] | None = None
    desc: str = "running"
    progress: bool = False

    def bar(self) -> tqdm:
        sizes = self.sizes or [1] * len(self.units)
        return tqdm(total=sum(sizes), desc=self.desc, unit="sample" if self.sizes else "unit",
                    disable=not self.progress, leave=False)

    def size(self, i: int) -> int:
        return self.sizes[i] if self.sizes else 1


class Executor:
    """Runs a :class:`Task`'s units; ``report`` describes the last run (per-worker timing)."""

    mode = "serial"
    workers = 1

    def __init__(self) -> None:
        self.report: dict | None = None

    def run(self, task: Task) -> list:
        raise NotImplementedError

    def _finish(self, metas: list[dict], retries: int, start: float) -> None:
        per_worker: dict[str, dict] = {}
        for meta in metas:
            entry = per_worker.setdefault(meta["worker"], {"worker": meta["worker"], "units": 0, "samples": 0,
                                                           "seconds": 0.0, "load_seconds": 0.0, "peak_rss": 0})
            entry["units"] += 1
            entry["samples"] += meta.get("samples", 0)
            entry["seconds"] += meta["seconds"]
            entry["load_seconds"] += meta["load_seconds"]
            entry["peak_rss"] = max(entry["peak_rss"], meta["peak_rss"])
        self.report = {"mode": self.mode, "workers": self.workers, "units": len(metas), "retries": retries,
                       "seconds": time.perf_counter() - start, "per_worker": list(per_worker.values())}


class SerialExecutor(Executor):
    """Every unit in this process, in order; models are used as given (no copy)."""

    def run(self, task: Task) -> list:
        start = time.perf_counter()
        models = {name: worker.load(m) if not isinstance(m, ir.Model) else m for name, m in task.models.items()}
        results, metas = [], []
        with task.bar() as bar:
            for i, unit in enumerate(task.units):
                result, meta = worker.timed(task.fn, models, unit, 0.0)
                results.append(result)
                metas.append({**meta, "samples": task.size(i)})
                bar.update(task.size(i))
        self._finish(metas, 0, start)
        return results


class LocalExecutor(Executor):
    """``workers`` processes of this machine (started clean: nothing of this process's state,
    ONNX Runtime threads included, is copied into them). Models travel as files: an in-memory
    model is saved once to a temporary folder (external data included) that every worker
    loads once."""

    mode = "local"

    def __init__(self, workers: int, retries: int = DEFAULT_RETRIES):
        super().__init__()
        if workers < 1:
            raise UsageError(f"--workers must be at least 1 (got {workers})")
        self.workers, self.retries = workers, retries

    def run(self, task: Task) -> list:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="onnxprune-models-") as tmp:
            paths = worker.ship_to_disk(task.models, Path(tmp))
            results = self._run(task, paths)
        self._finish([meta for _, meta in results], self._retried, start)
        return [result for result, _ in results]

    def _run(self, task: Task, paths: dict[str, str]) -> list:
        results: list = [None] * len(task.units)
        attempts = [0] * len(task.units)
        self._retried = 0

        def done(i: int, payload) -> None:
            result, meta = payload
            results[i] = (result, {**meta, "samples": task.size(i)})
            bar.update(task.size(i))

        def died(i: int) -> None:
            attempts[i] += 1
            if attempts[i] > self.retries:
                raise UsageError(f"a worker process died {attempts[i]} times running unit {i} of "
                                 f"'{task.desc}' (out of memory?); nothing was written")
            self._retried += 1

        with task.bar() as bar:
            local.Pool(local.context(), self.workers, paths).run(task.fn, task.units, done, died)
        return results


def report_lines(report: Mapping | None) -> list[str]:
    """Per-worker timing of a run shared by several workers, as printed (nothing for none)."""
    if not report:
        return []
    rows = [(w["worker"], w["units"], w["samples"], f"{w['seconds']:.2f} s", f"{w['load_seconds']:.2f} s",
             human(w["peak_rss"], "B")) for w in report["per_worker"]]
    head = (f"{report['mode']}: {report['units']} units on {len(rows)} workers in "
            f"{report['seconds']:.2f} s, {report['retries']} retried")
    return [head, table(["worker", "units", "samples", "busy", "model load", "peak memory"], rows, align="lrrrrr")]
