"""ONNX Runtime sessions and sample inputs.

Sessions are created from serialized bytes when that copies little (external data stays
on disk and is read by ONNX Runtime from its folder) and from a temporary file with
external data otherwise (protobuf bytes cannot exceed 2 GiB).
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from onnxprune import providers as eps
from onnxprune import shapes
from onnxprune._maptypes import densify_all
from onnxprune.errors import (
    DataError,
    InvalidModelError,
    OnnxPruneError,
    UnsupportedError,
    first_line,
)
from onnxprune.io import inline_nbytes, iter_tensors, release_mappings, save_model, weights_nbytes
from onnxprune.profiling import timed

# In-memory weights up to this size are handed to ONNX Runtime as serialized bytes (fast);
# beyond it, through a temporary file (serializing would hold two more copies in memory).
SESSION_BYTES_LIMIT = 512 * 2**20
# Random inputs are for parity checks; a shape asking for more than this is a hostile or
# broken model (the data could exhaust memory), not something to allocate.
RANDOM_INPUT_LIMIT = 2**30

# Kept for callers of the old names; onnxprune.providers is where providers are handled.
PROVIDER_ALIASES = eps.ALIASES


def resolve_provider(name: str) -> str:
    """'cpu' -> 'CPUExecutionProvider'; a full provider name is returned as it is."""
    return eps.resolve(name)


def available_providers() -> list[str]:
    """Compiled-in providers and installed plugin EPs that offer a device here."""
    return eps.available()


@contextlib.contextmanager
def session(
    model: ir.Model | str | os.PathLike,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    *,
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
    intra_op_threads: int | None = None,
    optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    execution_order: ort.ExecutionOrder | None = None,
    configure: Callable[[ort.SessionOptions], None] | None = None,
) -> Iterator[ort.InferenceSession]:
    """An InferenceSession for an in-memory model or a model file.

    ``providers`` in priority order (short or full names; plugin EPs included) with
    ``provider_options`` {provider: {key: value}} (see onnxprune.providers.configure).
    ``configure`` may set further options (e.g. where to save the optimised model). Load
    errors become :class:`InvalidModelError`, or :class:`UnsupportedError` when the
    provider has no kernel for an op/type (e.g. bfloat16 on CPU).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization_level
    options.log_severity_level = 3
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if execution_order is not None:
        options.execution_order = execution_order
    if configure is not None:
        configure(options)
    chosen = eps.configure(options, providers, provider_options)
    name = model.graph.name if isinstance(model, ir.Model) else str(model)
    with _session_source(model, options) as source:
        printed = io.StringIO()  # ORT prints a provider's start-up error to stdout, then falls back
        try:
            with contextlib.redirect_stdout(printed):
                sess = ort.InferenceSession(source, sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            raise _ort_error(exc, f"ONNX Runtime cannot load model '{name}'") from None
        if "EP Error" in printed.getvalue():  # never measure or compare the CPU under another's name
            raise UnsupportedError(f"execution provider {eps.resolve(providers[0])} could not start for model "
                                   f"'{name}': {_ep_error(printed.getvalue())}")
        yield sess


@contextlib.contextmanager
def _session_source(model: ir.Model | str | os.PathLike, options: ort.SessionOptions) -> Iterator[str | bytes]:
    """What to hand ONNX Runtime without copying more weights than needed.

    A path is passed as it is. An in-memory model is serialized to bytes when that copies
    little (its external tensors stay references, resolved in their folder through
    ``session.model_external_initializers_file_folder_path``); otherwise it is saved into
    a temporary folder (in-memory tensors written out, external ones copied by the kernel)
    and loaded from there, since protobuf bytes cannot exceed 2 GiB.
    """
    if not isinstance(model, ir.Model):
        yield str(model)
        return
    release_mappings(model)  # ONNX Runtime maps the same files; do not count them twice
    if weights_nbytes(model) > SESSION_BYTES_LIMIT:
        # Prepacking would keep a second, repacked copy of every MatMul/Gemm weight.
        options.add_session_config_entry("session.disable_prepacking", "1")
    folders = {Path(str(t.base_dir)).resolve() for t in iter_tensors(model) if isinstance(t, ir.ExternalTensor)}
    if inline_nbytes(model) <= SESSION_BYTES_LIMIT and len(folders) <= 1:
        if folders:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(folders.pop())
            )
        yield ir.to_proto(model).SerializeToString()
        return
    tmpdir = tempfile.mkdtemp(prefix="onnxprune-session-")
    try:
        yield str(save_model(model, Path(tmpdir) / "model.onnx", external_data=True, check_runtime=False))
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _ep_error(printed: str) -> str:
    """The reason in ORT's 'EP Error ... when using [...]' banner, without C++ file and signature."""
    match = re.search(r"^EP Error (.*?) when using \[", printed, re.S | re.M)
    text = " ".join((match.group(1) if match else printed).split())
    return re.sub(r"^/\S+:\d+ .*?\) (?=[A-Z])", "", text) or "unknown error"


def _ort_error(exc: Exception, what: str) -> OnnxPruneError:
    """One line from an ONNX Runtime exception, as the matching project error."""
    text = re.sub(r"/\S+:\d+ .*?\) (?=[A-Z])", "", first_line(exc))  # C++ file:line and signature
    kind = re.match(r"\[ONNXRuntimeError\] : \d+ : (\w+) : ", text)
    detail = text[kind.end():] if kind else text
    status = kind.group(1) if kind else ""
    if status == "NOT_IMPLEMENTED":
        return UnsupportedError(f"{what}: {detail}")
    if status == "INVALID_ARGUMENT" and "input" in detail.lower():
        return DataError(f"{what}: {detail}")
    return InvalidModelError(f"{what}: {detail}")


def run(
    model: ir.Model | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    output_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run the model once and return its outputs by name."""
    with session(model, providers) as sess:
        names = list(output_names) if output_names else [o.name for o in sess.get_outputs()]
        return dict(zip(names, run_session(sess, names, feeds)))


def run_session(sess: ort.InferenceSession, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list:
    """``sess.run`` with ORT's errors turned into project errors (bad feeds: DataError)."""
    try:
        outputs = sess.run(list(names) if names is not None else None, dict(feeds))
    except Exception as exc:
        raise _ort_error(exc, "ONNX Runtime failed to run the model") from None
    return densify_all(outputs)  # a sequence of maps (ZipMap) as a [N, C] array


def input_specs(model: ir.Model) -> dict[str, tuple[tuple[int | str | None, ...], np.dtype]]:
    """{input name: (shape with symbolic dims as str/None, numpy dtype)}, initializers excluded."""
    specs = {}
    for value in model.graph.inputs:
        if value.name is None or value.name in model.graph.initializers:  # (ONNX names every input)
            continue
        shape = tuple(
            d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)
            for d in (value.shape or ())
        )
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        specs[value.name] = (shape, np.dtype(dtype))
    return specs


def random_inputs(model: ir.Model, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the shapes :func:`onnxprune.shapes.resolve` decides (an open first
    axis is ``batch``; other open dims come from the user's ``--input-shape`` or are an error).

    Only good for exact-parity checks; value ranges mean nothing for calibration.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    concrete = shapes.resolve(model, batch)
    for name, (shape, dtype) in input_specs(model).items():
        dims = list(concrete[name])
        if 0 in dims:
            raise DataError(
                f"input '{name}' has shape {list(shape)} with a zero dimension: no data can flow "
                "through the model, so there is nothing to run or compare"
            )
        if math.prod(dims) * dtype.itemsize > RANDOM_INPUT_LIMIT:
            raise DataError(
                f"input '{name}' has shape {list(shape)}: {math.prod(dims) * dtype.itemsize / 2**30:.1f} GiB "
                "of random data per run; give real sample data instead"
            )
        if dtype == ir.DataType.BFLOAT16.numpy():
            raise UnsupportedError(
                f"input '{name}' is bfloat16, which ONNX Runtime's Python API cannot take from numpy"
            )
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, 2, size=dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, size=dims).astype(bool)
        else:
            raise DataError(f"cannot make random data for input '{name}' of type {dtype}")
    return feeds


@timed("latency check")
def latency_ms(
    model: ir.Model | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    *,
    runs: int = 10,
    warmup: int = 2,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
) -> float:
    """Median wall time of one ``sess.run`` in milliseconds, with a fixed thread count.

    Fixed threads (default 1) keep numbers comparable between runs on a shared machine (they
    bind ONNX Runtime's own kernels; a provider such as OpenVINO keeps its own threading).
    """
    with session(model, providers, provider_options=provider_options, intra_op_threads=threads) as sess:
        for _ in range(warmup):
            run_session(sess, None, feeds)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            run_session(sess, None, feeds)
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def optimized_op_counts(model: ir.Model, provider: str = "CPUExecutionProvider") -> collections.Counter[str]:
    """Op histogram of the graph ONNX Runtime runs on ``provider`` after its optimisations
    (fused and integer kernels included), read from the optimised model it saves."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "optimized.onnx")

        def save(options: ort.SessionOptions) -> None:
            options.optimized_model_filepath = path

        with session(model, [provider], configure=save):
            pass
        return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


class _RunnerSession:
    """An InferenceSession behind :class:`onnxprune.passes.prune.runner.Session`."""

    def __init__(self, sess: ort.InferenceSession) -> None:
        self._sess = sess

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return run_session(self._sess, names, feeds)


class OrtRunner:
    """The :class:`~onnxprune.passes.prune.runner.ModelRunner` that data-driven pruning gets from
    the stage API: ONNX Runtime on the CPU provider."""

    def input_names(self, model: ir.Model) -> set[str]:
        return set(input_specs(model))

    @contextlib.contextmanager
    def session(self, model: ir.Model) -> Iterator[_RunnerSession]:
        with session(model) as sess:
            yield _RunnerSession(sess)

