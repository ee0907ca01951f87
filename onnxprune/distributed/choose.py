"""Which executor the options ask for: ``--workers`` / ``--ray`` on the command line, one
``executor=`` argument in the API."""

from __future__ import annotations

from onnxprune.distributed.executor import Executor, LocalExecutor
from onnxprune.errors import UsageError


def make_executor(workers: int | None = None, ray: str | None = None) -> Executor | None:
    """The executor the CLI options ask for: ``ray`` (an address: auto, host:port,
    ray://host:port) with at most ``workers`` units at a time, else ``workers`` > 1 local
    processes, else None (the plain single-process path)."""
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    if ray is not None:
        from onnxprune.distributed.ray_backend import (
            RayExecutor,  # ray is an optional extra
        )

        return RayExecutor(ray, workers)
    if workers is not None and workers > 1:
        return LocalExecutor(workers)
    return None


def resolve_executor(executor: Executor | int | str | None) -> Executor | None:
    """The API's ``executor=`` argument: an Executor, a number of local processes, a Ray
    address ('ray:auto', 'ray:host:port' or 'ray://host:port'), or None (single process)."""
    if executor is None or isinstance(executor, Executor):
        return executor
    if isinstance(executor, bool) or not isinstance(executor, (int, str)):
        raise UsageError(f"executor must be an Executor, a number of workers or a Ray address, "
                         f"not {type(executor).__name__}")
    if isinstance(executor, int):
        return make_executor(workers=executor)
    if executor.startswith("ray://"):
        return make_executor(ray=executor)
    if executor.startswith("ray:"):
        return make_executor(ray=executor[4:])
    raise UsageError(f"executor '{executor}': expected 'ray:auto', 'ray:HOST:PORT' or 'ray://HOST:PORT'")
