"""What runs inside a worker process: models loaded once per process, units timed."""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxprune.io import load_model, save_model

_MODELS: dict[str, ir.Model] = {}  # this process's models, by name (local) or token (Ray)
_LOAD_SECONDS = [0.0]  # load time not yet charged to a unit


def ship_to_disk(models: Mapping[str, object], folder: Path) -> dict[str, str]:
    """Paths the workers can load: given paths as they are, in-memory models saved to
    ``folder`` (with their external data, if they have any)."""
    paths = {}
    for name, model in models.items():
        if isinstance(model, ir.Model):
            paths[name] = str(save_model(model, folder / f"{name}.onnx"))
        else:
            paths[name] = str(model)
    return paths


def external_locations(path: Path) -> set[str]:
    """The external data files a saved model names (checked safe by load_model on arrival)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {
        entry.value
        for tensor in onnx.external_data_helper._get_all_tensors(proto)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def load(path: str | os.PathLike) -> ir.Model:
    start = time.perf_counter()
    model = load_model(path)
    _LOAD_SECONDS[0] += time.perf_counter() - start
    return model


def init_local(paths: Mapping[str, str]) -> None:
    """ProcessPoolExecutor initializer: load every model once for this process."""
    for name, path in paths.items():
        _MODELS[name] = load(path)


def run_local(fn, unit):
    return timed(fn, _MODELS, unit)


def timed(fn, models: Mapping[str, ir.Model], unit, load_seconds: float | None = None):
    """``fn(models, unit)`` and what it cost: (result, meta)."""
    start = time.perf_counter()
    result = fn(models, unit)
    if load_seconds is None:
        load_seconds, _LOAD_SECONDS[0] = _LOAD_SECONDS[0], 0.0
    return result, {
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "seconds": time.perf_counter() - start,
        "load_seconds": load_seconds,
        "peak_rss": peak_rss(),
    }


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM on Linux (ru_maxrss there carries
    the parent's peak over a fork), else ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
