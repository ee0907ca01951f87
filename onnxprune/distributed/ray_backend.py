"""Running units on a Ray cluster (the optional extra ``onnxprune[ray]``).

Each model is saved once (external data included), its files go into Ray's object store
once, and each worker process fetches and loads them the first time one of its units needs
them (later units reuse the loaded model). At most ``workers`` units run at a time (default:
the cluster's CPUs). Ray's own task retries are off: a unit whose worker died (killed, out of
memory, node lost) is submitted again here, so retries are counted and bounded the same way
as for local processes.
"""

from __future__ import annotations

import socket
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from onnxprune.distributed import worker
from onnxprune.distributed.executor import DEFAULT_RETRIES, Executor, Task
from onnxprune.errors import UsageError, first_line

CONNECT_TIMEOUT = 10.0  # seconds to reach an explicit host:port before calling it unreachable


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'onnxprune[ray]'") from None
    return ray


class RayExecutor(Executor):
    mode = "ray"

    def __init__(self, address: str = "auto", workers: int | None = None, retries: int = DEFAULT_RETRIES):
        super().__init__()
        self.address, self.retries, self._limit = address, retries, workers
        self.ray = _ray()
        self._connect()
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = workers or max(1, cpus)

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        _check_reachable(self.address)
        try:
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:  # ConnectionError, RuntimeError, grpc errors...
            raise UsageError(f"cannot reach the Ray cluster at '{self.address}' ({first_line(exc)})") from None

    def run(self, task: Task) -> list:
        ray = self.ray
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="onnxprune-models-") as tmp:
            paths = worker.ship_to_disk(task.models, Path(tmp))
            shipped = {name: (uuid.uuid4().hex, Path(path).name, [ray.put(_read_files(path))])
                       for name, path in paths.items()}
        remote = ray.remote(max_retries=0, num_cpus=1)(run_ray)
        results: list = [None] * len(task.units)
        attempts = [0] * len(task.units)
        queue = list(range(len(task.units)))
        running: dict = {}
        retried = 0
        with task.bar() as bar:
            while queue or running:
                while queue and len(running) < self.workers:
                    i = queue.pop(0)
                    running[remote.remote(task.fn, task.units[i], shipped)] = i
                done, _ = ray.wait(list(running), num_returns=1)
                i = running.pop(done[0])
                try:
                    result, meta = ray.get(done[0])
                except ray.exceptions.RayTaskError as exc:  # the unit raised: not a fault of the worker
                    for ref in running:
                        ray.cancel(ref, force=True)
                    cause = getattr(exc, "cause", None)
                    raise (cause if isinstance(cause, Exception) else exc) from None
                except ray.exceptions.RayError as exc:  # the worker or its node died
                    attempts[i] += 1
                    if attempts[i] > self.retries:
                        raise UsageError(f"Ray lost unit {i} of '{task.desc}' {attempts[i]} times "
                                         f"({first_line(exc)}); nothing was written") from None
                    retried += 1
                    queue.insert(0, i)
                    continue
                results[i] = (result, {**meta, "samples": task.size(i)})
                bar.update(task.size(i))
        self._finish([meta for _, meta in results], retried, start)
        return [result for result, _ in results]


def run_ray(fn, unit, shipped):
    """A unit on a Ray worker: models fetched from the object store on first use only."""
    import ray

    models = {}
    for name, (token, main, (ref,)) in shipped.items():  # main: the model file's name
        if token not in worker._MODELS:
            folder = Path(tempfile.mkdtemp(prefix="onnxprune-worker-"))
            for file, data in ray.get(ref).items():
                target = folder / file
                if Path(file).is_absolute() or ".." in Path(file).parts:
                    raise UsageError(f"model file name '{file}' leaves its folder")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            worker._MODELS[token] = worker.load(str(folder / main))
        models[name] = worker._MODELS[token]
    return worker.timed(fn, models, unit)


def _read_files(name: str) -> dict[str, bytes]:
    """The model file and the external data files it names (relative to its folder)."""
    path = Path(name)
    files = {path.name: path.read_bytes()}
    for location in worker.external_locations(path):
        files[location] = (path.parent / location).read_bytes()
    return files


def _check_reachable(address: str) -> None:
    """An explicit host:port that does not answer is an error at once (Ray would retry for a
    minute); 'auto' is left to Ray, which fails fast when no local cluster runs."""
    if address in ("auto", "local") or not address:
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        port = None
    if not host or port is None:
        raise UsageError(f"Ray address '{address}': expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise UsageError(f"cannot reach the Ray cluster at '{address}' ({exc.strerror or exc})") from None

