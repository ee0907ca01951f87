"""Calibration, parity checks and sensitivity sweeps on several workers: local processes and a
real local Ray cluster (started here on 127.0.0.1, stopped at the end). Results must equal the
single-process ones (calibration tables and sweep rows bit for bit, check metrics up to float
summation order), also when a worker is killed mid-run; an unreachable cluster is a one-line
exit-2 error."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import psutil
import pytest
from click.testing import CliRunner

from onnxprune.api import quantize
from onnxprune.api.sensitivity_api import SensitivityResult, sensitivity
from onnxprune.calibration import calibrate, open_dataset
from onnxprune.cli import cli
from onnxprune.distributed import LocalExecutor, SerialExecutor, sample_ranges
from onnxprune.io import load_model
from onnxprune.parity import check
from onnxprune.parity.metrics import OutputStats, Reservoir

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits"
MODEL, CALIB, EVAL = DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "eval.npz"
SUM_RTOL = 1e-12  # check's float sums merged in another order (documented in parity.check)
# Ray's switch for "loopback only" (else it swaps 127.0.0.1 for the host's address), read when
# ray is first imported: set before any test of this worker process can import it.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def big_calib(model):
    """1,076 samples (the calibration set 4 times): a run long enough to kill a worker in."""
    x = np.load(CALIB)["input"]
    return {"input": np.concatenate([x] * 4)}


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "digits.int8.onnx"
    quantize(MODEL, path, calib=CALIB, latency=False)
    return path


@pytest.fixture(scope="module")
def sweep_args(tmp_path_factory):
    """A small sensitivity sweep: 4 groups at 90 % and the INT8 model with each of its 9
    quantized nodes kept float in turn (14 units), on 64 calibration and 32 labelled samples."""
    calib = tmp_path_factory.mktemp("sweep") / "calib64.npz"
    np.savez(calib, input=np.load(CALIB)["input"][:64])
    return {"calib": str(calib), "eval_data": str(EVAL), "labels": "labels", "ratios": (0.9,), "criterion": "l1",
            "quantize": True, "limit": 32}


@pytest.fixture(scope="module")
def single_sweep(sweep_args):
    return sensitivity(MODEL, **sweep_args)


def table_of(model, data, method, executor=None):
    return calibrate(model, open_dataset(data, model), method=method, batch_size=8, sample=20_000,
                     executor=executor)


def same_check(a, b) -> None:
    """Equal check results: exact counts/max/agreement, sums to SUM_RTOL, same verdict."""
    assert a.passed == b.passed
    for ca, cb in zip(a.comparisons, b.comparisons):
        for name, oa in ca["outputs"].items():
            ob = cb["outputs"][name]
            for key, value in oa.items():
                if isinstance(value, float):
                    assert ob[key] == pytest.approx(value, rel=SUM_RTOL, abs=1e-15), key
                else:
                    assert ob[key] == value, key


# -- pieces -------------------------------------------------------------------------------


def test_sample_ranges_are_whole_batches_covering_everything():
    for samples, batch, workers in [(269, 8, 2), (1, 32, 4), (100, 7, 3), (64, 64, 2)]:
        ranges = sample_ranges(samples, batch, workers)
        assert ranges[0][0] == 0 and ranges[-1][1] == samples
        assert all(a < b and a % batch == 0 for a, b in ranges)
        assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))


def test_reservoir_merge_keeps_everything_while_it_fits_and_samples_uniformly_beyond():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(300), rng.standard_normal(500) + 3
    small = _filled(Reservoir(1000), a)
    small.merge(_filled(Reservoir(1000), b))
    assert np.array_equal(np.sort(small.data[:800]), np.sort(np.concatenate([a, b])))
    # beyond the size: the merged sample's quantiles estimate those of the union as well
    # as one pass's sample does (a 4,096 sample: rank error well under 3%)
    x, y = rng.standard_normal(40_000), rng.exponential(size=60_000)
    merged = _filled(Reservoir(4096, seed=1), x).merge(_filled(Reservoir(4096, seed=2), y))
    union = np.concatenate([x, y])
    for q in (0.5, 0.9, 0.99):
        rank = np.mean(union <= merged.quantile(q))
        assert abs(rank - q) < 0.03
    assert merged.seen == union.size


def _filled(reservoir: Reservoir, values: np.ndarray) -> Reservoir:
    for chunk in np.array_split(values, 7):
        reservoir.add(chunk)
    return reservoir


def test_output_stats_merge_equals_one_pass():
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((64, 10)).astype(np.float32)
    cand = ref + rng.normal(0, 0.05, ref.shape).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    whole = OutputStats(1e-2, 0.0)
    whole.update(ref, cand, labels)
    parts = OutputStats(1e-2, 0.0)
    parts.update(ref[:20], cand[:20], labels[:20])
    other = OutputStats(1e-2, 0.0)
    other.update(ref[20:], cand[20:], labels[20:])
    a, b = whole.summary(), parts.merge(other).summary()
    for key, value in a.items():
        assert b[key] == (pytest.approx(value, rel=SUM_RTOL) if isinstance(value, float) else value), key


# -- local processes ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_local_workers_calibrate_bit_for_bit(model, method):
    single = table_of(model, CALIB, method)
    shared = table_of(model, CALIB, method, executor=2)
    assert shared.as_dict() == single.as_dict()  # bit for bit, histogram methods too
    assert table_of(model, CALIB, method, executor=SerialExecutor()).as_dict() == single.as_dict()
    report = shared.execution
    assert report["mode"] == "local" and report["units"] == 8 and report["retries"] == 0
    assert sum(w["samples"] for w in report["per_worker"]) == 269
    assert all(w["peak_rss"] > 0 and w["seconds"] > 0 for w in report["per_worker"])


def test_local_workers_check_equals_single_process(int8_model):
    for data, labels in ((EVAL, "labels"), (None, None)):  # a dataset with labels; random inputs
        single = check(MODEL, int8_model, data, labels=labels, batch_size=16, samples=None if data else 40)
        shared = check(MODEL, int8_model, data, labels=labels, batch_size=16, samples=None if data else 40,
                       executor=LocalExecutor(2))
        same_check(single, shared)
        assert shared.execution["units"] > 1


def test_killed_local_worker_is_retried_and_changes_nothing(model, big_calib):
    single = table_of(model, big_calib, "entropy")
    with _killer(_forkserver_child):
        shared = table_of(model, big_calib, "entropy", executor=LocalExecutor(2))
    assert shared.execution["retries"] >= 1, shared.execution
    assert shared.as_dict() == single.as_dict()


def test_cli_workers_writes_the_same_table_and_model(tmp_path):
    runner = CliRunner()
    for name, extra in (("one", []), ("two", ["--workers", "2"])):
        result = runner.invoke(cli, ["quantize", str(MODEL), "-o", str(tmp_path / f"{name}.onnx"), "--calib",
                                      str(CALIB), "--method", "percentile", "--no-latency", "--save-table",
                                      str(tmp_path / f"{name}.json"), "--no-placement", *extra])  # placement: timed
        assert result.exit_code == 0, result.output
    assert "2 workers" in result.output and "peak memory" in result.output
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    assert (tmp_path / "one.onnx").read_bytes() == (tmp_path / "two.onnx").read_bytes()


def test_local_workers_sweep_like_one_process_also_when_one_is_killed(single_sweep, sweep_args, tmp_path):
    """`sensitivity --workers 2`: the very rows of one process (every float bit for bit, same
    order), a worker SIGKILLed mid-sweep has its unit run again, per-worker timing printed."""
    a = sweep_args
    out = tmp_path / "sens.json"
    args = ["sensitivity", str(MODEL), "--calib", a["calib"], "--eval", a["eval_data"], "--labels", a["labels"],
            "--ratios", "0.9", "--criterion", "l1", "--quantize", "--limit", "32", "--workers", "2", "-o", str(out)]
    with _killer(_forkserver_child):
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    shared = SensitivityResult.load(out)
    assert len(single_sweep.rows) == 14 and any(r["fidelity"] < 0.9 for r in single_sweep.rows)
    assert shared.rows == single_sweep.rows and shared.baseline == single_sweep.baseline
    assert shared.execution["mode"] == "local" and shared.execution["retries"] >= 1, shared.execution
    assert sum(w["units"] for w in shared.execution["per_worker"]) == 14
    assert "local: 14 units on" in result.output and "peak memory" in result.output


def test_failing_unit_writes_nothing(tmp_path):
    """Data only a worker reads is broken (a compressed file's data corrupt past its header):
    the run fails with one line, exit 2, and writes nothing."""
    folder = tmp_path / "calib"
    folder.mkdir()
    x = np.load(CALIB)["input"]
    np.savez(folder / "a.npz", input=x[:64])
    np.savez_compressed(folder / "b.npz", input=np.random.default_rng(0).standard_normal(x[:64].shape, np.float32))
    raw = bytearray((folder / "b.npz").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    (folder / "b.npz").write_bytes(bytes(raw))
    result = CliRunner().invoke(cli, ["quantize", str(MODEL), "-o", str(tmp_path / "q.onnx"), "--calib", str(folder),
                                      "--no-latency", "--workers", "2", "--save-table", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "b.npz: cannot read array 'input'" in result.output
    assert result.output.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


def test_unreachable_cluster_is_a_one_line_usage_error(tmp_path):
    port = _free_port()  # nothing listens there
    result = CliRunner().invoke(cli, ["check", str(MODEL), str(MODEL), "--ray", f"127.0.0.1:{port}"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and result.output.count("\n") == 1


# -- a real Ray cluster ---------------------------------------------------------------------


@pytest.fixture
def ray_cluster():
    """A one-node Ray cluster of 2 CPUs on loopback only, stopped (only it) at the end."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'onnxprune[ray]')")
    port, dashboard, client = _free_port(), _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="opr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "2", "--include-dashboard", "false", "--dashboard-port", str(dashboard),
                        "--ray-client-server-port", str(client), "--disable-usage-stats", "--temp-dir", temp],
                       check=True, capture_output=True, env=env, timeout=120)
        yield f"ray:127.0.0.1:{port}", temp
    finally:
        ray.shutdown()
        _stop_cluster(temp, port)  # not `ray stop`: that stops every Ray cluster of the machine
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_cluster_runs_calibration_check_and_sweep_like_one_process(ray_cluster, model, int8_model, single_sweep,
                                                                      sweep_args, tmp_path):
    """One test (pytest-xdist spreads tests over its workers: one test starts one cluster):
    calibration bit for bit, a sensitivity sweep row for row with a worker killed mid-sweep
    and retried (calibration's kill: local workers above), check through the CLI."""
    address, temp = ray_cluster
    shared = table_of(model, CALIB, "entropy", executor=address)
    assert shared.as_dict() == table_of(model, CALIB, "entropy").as_dict()  # minmax: local workers above
    assert shared.execution["mode"] == "ray" and shared.execution["workers"] == 2

    with _killer(functools.partial(_ray_unit_process, temp)):
        swept = sensitivity(MODEL, **sweep_args, executor=address)
    assert swept.rows == single_sweep.rows and swept.baseline == single_sweep.baseline
    assert swept.execution["mode"] == "ray" and swept.execution["retries"] >= 1, swept.execution

    report = tmp_path / "check.json"
    result = CliRunner().invoke(cli, ["check", str(MODEL), str(int8_model), "--data", str(EVAL), "--labels",
                                      "labels", "--batch-size", "16", "--ray", address[4:], "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "ray: " in result.output
    shared = json.loads(report.read_text())
    assert shared["execution"]["mode"] == "ray"
    same_check(check(MODEL, int8_model, EVAL, labels="labels", batch_size=16), types.SimpleNamespace(**shared))


# -- helpers --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(temp: str, port: int) -> None:
    """Kill the processes of the cluster started with ``temp`` and GCS ``port``, workers first."""
    ours = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if temp in line or f":{port}" in line:
            ours.append(proc)
    for proc in [c for p in ours for c in _children(p)] + ours:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(ours, timeout=10)


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def _forkserver_child() -> psutil.Process | None:
    """A pool worker of this process: a child of its multiprocessing fork server."""
    for proc in psutil.Process().children(recursive=True):
        try:
            parent = proc.parent()
            if parent and "forkserver" in " ".join(parent.cmdline()):
                return proc
        except psutil.Error:
            continue
    return None


def _ray_unit_process(temp: str) -> psutil.Process | None:
    """A worker of our cluster (its raylet names ``temp``) busy with one of our units (Ray
    titles it 'ray::run_ray'): never another cluster's, e.g. another test run's."""
    for proc in psutil.process_iter(["cmdline"]):
        if " ".join(proc.info["cmdline"] or []).startswith("ray::run_ray"):
            try:
                if any(temp in " ".join(p.cmdline()) for p in proc.parents()):
                    return proc
            except psutil.Error:
                continue
    return None


class _killer:
    """SIGKILL up to ``times`` processes that ``find`` returns, ``gap`` seconds apart, while the
    block runs (twice: one kill could land on a worker between units, which loses nothing;
    at most two kills keep within the two retries a unit gets)."""

    def __init__(self, find, times: int = 2, gap: float = 0.5):
        self.find, self.times, self.gap = find, times, gap
        self.stop, self.killed = threading.Event(), []

    def _run(self):
        while not self.stop.is_set() and len(self.killed) < self.times:
            proc = self.find()
            if proc is not None and proc.pid not in self.killed:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                    self.killed.append(proc.pid)
                    self.stop.wait(self.gap)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        assert self.killed, "no worker was found to kill"
