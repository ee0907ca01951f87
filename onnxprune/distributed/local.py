"""A small process pool that survives its workers dying.

concurrent.futures' ProcessPoolExecutor marks the whole pool broken when one worker dies, and
on CPython 3.11 its shutdown can then hang while a surviving worker is still sending a large
result. Here each worker has its own pipe; the coordinator waits on the pipes and on the
processes' sentinels, so a dead worker is noticed at once, its unit goes back to the queue
and a fresh worker takes its place.
"""

from __future__ import annotations

import collections
import multiprocessing
import pickle
from multiprocessing.connection import wait

from onnxprune.distributed import worker


def serve(conn, paths) -> None:
    """A worker: load the models once, then run (fn, unit) messages until None."""
    worker.init_local(paths)
    while True:
        message = conn.recv()
        if message is None:
            return
        fn, unit = message
        try:
            reply = ("ok", worker.timed(fn, worker._MODELS, unit))
        except Exception as exc:  # the unit failed (bad data...): the caller raises it
            reply = ("error", exc)
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError):
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]}")))


class Pool:
    """``size`` worker processes running ``fn`` on units; ``on_death(i)`` is told of each unit
    whose worker died (it may raise to stop everything)."""

    def __init__(self, context, size: int, paths: dict[str, str]):
        self.context, self.size, self.paths = context, size, paths
        self.workers: dict = {}  # connection -> [process, unit index or None]

    def _start(self) -> None:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=serve, args=(child, self.paths), daemon=True)
        process.start()
        child.close()
        self.workers[parent] = [process, None]

    def run(self, fn, units, on_result, on_death) -> None:
        queue = collections.deque(range(len(units)))
        left = len(units)
        try:
            for _ in range(min(self.size, len(units))):
                self._start()
            while left:
                for conn, state in self.workers.items():
                    if state[1] is None and queue:
                        state[1] = queue.popleft()
                        try:
                            conn.send((fn, units[state[1]]))
                        except OSError:  # it died between units: its sentinel fires, the unit goes back
                            pass
                sentinels = {state[0].sentinel: conn for conn, state in self.workers.items()}
                for ready in wait([*self.workers, *sentinels]):
                    conn = sentinels.get(ready, ready)
                    if conn not in self.workers:
                        continue  # its pipe and its sentinel both fired: handled once
                    try:
                        status, payload = conn.recv() if conn is ready else _dead()
                    except (EOFError, OSError):
                        status, payload = _dead()
                    unit = self.workers[conn][1]
                    if status == "error":
                        raise payload
                    if status == "dead":
                        self._bury(conn)
                        if unit is not None:
                            on_death(unit)
                            queue.appendleft(unit)
                        if queue or any(s[1] is not None for s in self.workers.values()):
                            self._start()
                        continue
                    self.workers[conn][1] = None
                    on_result(unit, payload)
                    left -= 1
        finally:
            self.close()

    def _bury(self, conn) -> None:
        process, _ = self.workers.pop(conn)
        conn.close()
        process.join(timeout=5)

    def close(self) -> None:
        for conn in list(self.workers):
            try:
                conn.send(None)
            except OSError:
                pass
        for conn, (process, _) in list(self.workers.items()):
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self.workers.clear()


def _dead():
    return "dead", None


def context():
    """forkserver where there is one: workers fork from a clean server process (no ONNX
    Runtime threads or open sessions copied) that has imported onnxprune once. As with any
    multiprocessing, a script calling this needs the ``if __name__ == "__main__":`` guard."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["onnxprune.distributed.worker"])
    return ctx
