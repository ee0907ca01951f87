"""Where a command's time and memory go: seconds and peak RSS per phase.

Code marks its phases with ``with profiling.phase("calibration"):``; outside ``record()``
that costs nothing. Inside, each phase gets its wall time and the largest RSS seen while it
ran: a thread reads /proc/self/statm every few milliseconds (the kernel's high-water mark
cannot be split by phase without resetting it, and a reset would hide the true peak from
whoever measures the process from outside). Phases nest (``depth``); a parent's peak
includes its children's. The recording's peak is the process's own high-water mark.
Without /proc, peaks read as None.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import time
from collections.abc import Iterator

_STATUS = "/proc/self/status"
_STATM = "/proc/self/statm"
_INTERVAL = 0.005  # seconds between RSS samples
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


@dataclasses.dataclass
class Phase:
    name: str
    depth: int
    seconds: float = 0.0
    peak_mb: float | None = None


class Profile:
    """Phases in the order they started; ``total`` covers the whole recording."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._open: list[tuple[Phase, float]] = []  # (phase, its start) innermost last
        self.start = time.perf_counter()
        self.imports_s = _process_age()  # interpreter start to the first mark: imports
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="onnxprune-profile", daemon=True)
        if _rss_mb() is not None:
            self._sampler.start()

    def enter(self, name: str) -> Phase:
        depth = len(self._open)
        last = self.phases[-1] if self.phases else None
        if last is not None and (last.name, last.depth) == (name, depth) and all(p is not last for p, _ in self._open):
            phase = last  # consecutive runs of one phase (clean-up passes) add up in one row
        else:
            phase = Phase(name, depth)
            self.phases.append(phase)
        self._open.append((phase, time.perf_counter()))
        self._observe()
        return phase

    def exit(self, phase: Phase) -> None:
        self._observe()
        index = next(i for i, (p, _) in enumerate(self._open) if p is phase)
        phase.seconds += time.perf_counter() - self._open[index][1]
        del self._open[index]

    def stop(self) -> None:
        self._stop.set()
        if self._sampler.is_alive():
            self._sampler.join()

    def _sample(self) -> None:
        while not self._stop.wait(_INTERVAL):
            self._observe()

    def _observe(self) -> None:
        rss = _rss_mb()
        if rss is not None:
            for phase, _ in list(self._open):
                phase.peak_mb = max(phase.peak_mb or 0.0, rss)

    def to_dict(self) -> dict:
        seen = [p.peak_mb for p in self.phases if p.peak_mb is not None]
        peak = max([v for v in (_status_mb("VmHWM"), *seen) if v is not None], default=None)  # HWM, to the page
        return {
            "imports_s": None if self.imports_s is None else round(self.imports_s, 3),
            "total_s": round(time.perf_counter() - self.start, 3),
            "peak_mb": None if peak is None else round(peak, 1),
            "phases": [{"name": p.name, "depth": p.depth, "seconds": round(p.seconds, 3),
                        "peak_mb": None if p.peak_mb is None else round(p.peak_mb, 1)} for p in self.phases],
        }

    def render(self) -> str:
        """The timing block `--profile` prints."""
        data = self.to_dict()

        def mb(v):
            return "-" if v is None else f"{v:.0f} MB"

        rows = []
        if data["imports_s"] is not None:
            rows.append(("imports (interpreter start to command)", f"{data['imports_s']:.2f} s", "-"))
        rows += [("  " * p["depth"] + p["name"], f"{p['seconds']:.2f} s", mb(p["peak_mb"])) for p in data["phases"]]
        rows.append(("total (after imports; peak of the process)", f"{data['total_s']:.2f} s", mb(data["peak_mb"])))
        width = max(len(r[0]) for r in rows)
        lines = [f"{'phase':<{width}}  {'seconds':>9}  {'peak RSS':>9}"]
        lines += [f"{a:<{width}}  {b:>9}  {c:>9}" for a, b, c in rows]
        return "\n".join(lines)


_current: Profile | None = None


@contextlib.contextmanager
def record() -> Iterator[Profile]:
    """Profile the phases marked while the block runs (one recording at a time)."""
    global _current
    outer, _current = _current, Profile()
    try:
        yield _current
    finally:
        _current.stop()
        _current = outer


def current() -> Profile | None:
    return _current


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Mark a phase of the current recording; nothing when none is on."""
    profile = _current
    if profile is None:
        yield
        return
    entry = profile.enter(name)
    try:
        yield
    finally:
        profile.exit(entry)


def _rss_mb() -> float | None:
    try:
        with open(_STATM) as handle:
            return int(handle.read().split()[1]) * _PAGE_MB
    except (OSError, ValueError, IndexError):
        return None


def _status_mb(field: str) -> float | None:
    try:
        with open(_STATUS) as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _process_age() -> float | None:
    """Seconds since this process started (its imports, when called at a command's start)."""
    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def timed(name: str):
    """Decorator: every call of the function is a ``phase(name)``."""

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)

        return call

    return wrap
