"""Running map-reduce jobs (calibration, parity checks, sensitivity sweeps) on more than one
process: in-process (the default), local worker processes, or a Ray cluster.

A job is a list of independent *units* (a range of samples, a sweep point) and one pure
top-level function per unit; the models it needs travel once per worker (a file on disk for
local processes, Ray's object store for a cluster) and are loaded once there. Results come
back in unit order and are merged by the caller with its own exact merge operations.
"""

from onnxprune.distributed.choose import make_executor, resolve_executor
from onnxprune.distributed.executor import (
    Executor,
    LocalExecutor,
    SerialExecutor,
    Task,
    report_lines,
)
from onnxprune.distributed.shards import sample_ranges

__all__ = [
    "Executor",
    "LocalExecutor",
    "SerialExecutor",
    "Task",
    "make_executor",
    "report_lines",
    "resolve_executor",
    "sample_ranges",
]
