"""Loading and saving models safely.

Loading parses the protobuf without its external data, checks what a hostile or broken
file could use against us (tensor sizes that lie, external data outside the model's
folder, symlinks or hard links out of it, duplicate tensor names, a cycle) and then
hands the proto to onnx-ir, which memory-maps external data instead of reading it.
Every refusal is one line naming the file and the problem: :class:`ModelLoadError` (a
file that is not a readable model), :class:`UnsafeModelError` (data outside its folder) or
:class:`InvalidModelError` (a graph that is not valid ONNX).

Saving is atomic: the model (and its external data) is written into a temporary folder
beside the destination and renamed into place only once complete, so an interrupted run
never leaves a half-written file; the input model and the data files the model still
reads are never overwritten.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxprune import _maptypes, _protocheck
from onnxprune._extdata import check_external_data
from onnxprune._stream_save import save_streamed
from onnxprune.errors import BrokenOutputError, InvalidModelError, ModelLoadError, UsageError, first_line
from onnxprune.graphutils import name_unnamed_nodes, release_mapping
from onnxprune.profiling import phase, timed
from onnxprune.shapes import normalize_dims
from onnxprune.validate import check_structure

# Protobuf cannot serialize a message over 2 GiB; stay well clear of it.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights above which we save externally
# Large tensors start at 64 KiB offsets in saved external data, so that ONNX Runtime can
# memory-map them instead of copying (it needs offsets aligned to its mapping granularity).
EXTERNAL_DATA_ALIGNMENT = 65536
EXTERNAL_DATA_META = "onnxprune.external_data"  # model.meta flag: loaded with external data


def iter_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every tensor in the model: initializers and tensor attributes, subgraphs included."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.is_ref():
                    continue
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.value


def weights_nbytes(model: ir.Model) -> int:
    """Bytes of all tensors in the model (without reading external data)."""
    return sum(t.nbytes for t in iter_tensors(model))


def inline_nbytes(model: ir.Model) -> int:
    """Bytes of the tensors held in memory (what serializing the model would copy)."""
    return sum(t.nbytes for t in iter_tensors(model) if not isinstance(t, ir.ExternalTensor))


def has_external_data(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for t in iter_tensors(model))


def external_files(model: ir.Model) -> set[Path]:
    """The resolved paths of every external data file the model reads."""
    return {
        Path(t.path).resolve() for t in iter_tensors(model) if isinstance(t, ir.ExternalTensor)
    }


def release_mappings(model: ir.Model) -> None:
    """Unmap the external data files the model's tensors have mapped (they map again on the
    next read). Mapped pages count in the process's RSS; dropping them before a step that
    maps the same files again (an ONNX Runtime session) keeps them from counting twice."""
    for tensor in iter_tensors(model):
        release_mapping(tensor)


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc keeps what protobuf/ONNX Runtime
    freed after loading and cleaning a model). No-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@timed("load")
def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model; raise :class:`ModelLoadError` with a one-line reason on failure.

    A graph with a cycle, or names produced twice, raises :class:`InvalidModelError`.
    Nodes stored out of topological order are sorted (the format requires the order).
    """
    path = Path(path)
    _check_model_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except MemoryError:
        raise
    except Exception as exc:  # protobuf/onnx raise DecodeError, RuntimeError, ValueError...
        hint = _protocheck.sniff_format(path)
        raise ModelLoadError(
            f"{path}: not a valid ONNX model ({hint or f'protobuf parse failed: {first_line(exc, with_type=True)}'})"
        ) from None
    if not proto.HasField("graph") or not (proto.graph.node or proto.graph.output):
        hint = _protocheck.sniff_format(path) or "truncated or not an ONNX file?"
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found; {hint})")
    problem = _protocheck.find_problem(proto)
    if problem is not None:
        kind, message = problem
        raise (InvalidModelError if kind == "graph" else ModelLoadError)(f"{path}: {message}")
    map_types = _maptypes.take_out(proto, str(path))  # onnx-ir cannot hold map types (ZipMap)
    try:
        model = ir.serde.deserialize_model(proto)
    except MemoryError:
        raise
    except Exception as exc:  # onnx-ir raises a variety of errors on malformed protos
        raise ModelLoadError(f"{path}: malformed ONNX model ({first_line(exc, with_type=True)})") from None
    if map_types:
        model.meta[_maptypes.META] = map_types
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    normalize_dims(model)  # Paddle's -1 dims: unknown, like any other open dimension
    check_external_data(iter_tensors(model), path)
    if has_external_data(model):  # saved results keep the layout, even once weights are rewritten
        model.meta[EXTERNAL_DATA_META] = True
    _protocheck.sort_if_needed(model, str(path))
    return model


def _check_model_file(path: Path) -> None:
    try:
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if not path.is_file():
            raise ModelLoadError(f"{path}: not a regular file")
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    if size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path}: file is {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit; an ONNX model "
            "this large must keep its weights in external data files"
        )


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output_path(
    path: str | os.PathLike, input_path: str | os.PathLike | None = None, *, overwrite_input: bool = False
) -> Path:
    """Fail early (before any work) on an output path we would refuse to write."""
    path = Path(path)
    if input_path is not None and not overwrite_input:
        for target in (path, path.with_name(path.name + ".data")):
            if same_file(target, Path(input_path)):
                raise UsageError(
                    f"refusing to overwrite the input model {input_path}; choose another output path"
                )
    if path.is_dir():
        raise UsageError(f"{path}: output path is a folder")
    parent = path.parent
    if not parent.exists():
        raise UsageError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{parent}: output folder is not writable")
    return path


@timed("save")
def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    overwrite_input: bool = False,
    external_data: bool | None = None,
    check_runtime: bool = True,
) -> Path:
    """Save ``model`` to ``path`` atomically.

    Before the rename, ONNX Runtime (CPU, graph optimizations off: one cheap session) must
    load the staged file: a model it refuses is never written (:class:`BrokenOutputError`,
    exit 3, a bug), unless it refuses the input model as well (custom ops: not ours to judge).

    ``external_data=None`` chooses automatically: external data when the weights would push
    the protobuf near its 2 GiB limit or the model was loaded with external data. The external
    data file is ``<name>.data`` beside the model. ``input_path`` is the model the run read;
    writing onto it, or onto a data file the model reads, is refused unless
    ``overwrite_input`` is set. External tensors are copied file to file by the kernel
    (onnx-ir uses ``copy_file_range``), so saving costs no memory for unchanged weights.
    """
    path = check_output_path(path, input_path, overwrite_input=overwrite_input)
    nbytes = weights_nbytes(model)
    if external_data is None:
        external_data = (has_external_data(model) or bool(model.meta.get(EXTERNAL_DATA_META))
                         or nbytes > EXTERNAL_DATA_THRESHOLD)
    elif not external_data and nbytes > EXTERNAL_DATA_THRESHOLD:
        raise UsageError(
            f"{path}: {nbytes / 2**30:.1f} GiB of weights cannot be stored in one protobuf "
            "file (2 GiB limit); save with external data"
        )
    data_name = path.name + ".data"
    if not overwrite_input:
        sources = external_files(model)
        for target in (path, path.parent / data_name):
            if any(same_file(target, source) for source in sources):
                raise UsageError(
                    f"refusing to write {target}: the model still reads its weights from that "
                    "file; choose another output name"
                )
    try:
        with _staging_dir(path.parent) as tmp:
            staged = tmp / path.name
            if external_data:
                ir.save(model, staged, external_data=data_name, size_threshold_bytes=1024,
                        alignment=EXTERNAL_DATA_ALIGNMENT)
            else:  # one tensor at a time: ir.save would hold two more copies of the weights
                with _external_inlined(model):
                    save_streamed(model, staged)
            if _maptypes.needs_restore(model):
                _maptypes.restore_file(staged, model)
            if check_runtime:
                _check_runtime_loads(staged, input_path)
            _commit(tmp, staged, path, data_name)
    except OSError as exc:
        reason = "no space left on the device" if exc.errno == errno.ENOSPC else (exc.strerror or exc)
        raise UsageError(f"{path}: could not write the model ({reason}); nothing was written") from None
    return path


def _runtime_refusal(path: str | os.PathLike) -> str | None:
    """Why ONNX Runtime's CPU provider cannot load the model file, or None if it can."""
    import onnxruntime as ort  # here: loading and saving alone should not pay for it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's Fail/InvalidGraph/NotImplemented...
        text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from \S+ failed:)?", "", first_line(exc))
        return re.sub(r"/\S+:\d+ .*?\) (?=[A-Z])", "", text).strip()  # C++ file:line and signature
    return None


def _check_runtime_loads(staged: Path, input_path: str | os.PathLike | None) -> None:
    with phase("self-check session"):
        problem = _runtime_refusal(staged)
    if problem is None or (input_path is not None and _runtime_refusal(input_path) is not None):
        return
    raise BrokenOutputError(
        f"the result is not a model ONNX Runtime accepts ({problem}); this is a bug in onnxprune, "
        "nothing was written"
    )


@contextlib.contextmanager
def _external_inlined(model: ir.Model) -> Iterator[None]:
    """External initializers as in-memory tensors (views of their mapped data, no copy) while
    saving a single-file model; otherwise the file would still point at the data files."""
    swapped = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                swapped.append((value, tensor))
                value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=tensor.name)
    try:
        yield
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def _commit(tmp: Path, staged: Path, path: Path, data_name: str) -> None:
    """Rename the staged model (and its data) into place: all or nothing.

    Data first: a model file on disk must never point at data that is not there yet. A data
    file being replaced is kept aside until the model is in place and put back if renaming
    the model fails (or is interrupted), so an old output stays consistent.
    """
    new_data, data = tmp / data_name, path.parent / data_name
    if not new_data.exists():
        os.replace(staged, path)
        return
    previous = tmp / ".previous.data"
    had_previous = data.exists()
    if had_previous:
        os.replace(data, previous)
    try:
        os.replace(new_data, data)
        os.replace(staged, path)
    except BaseException:
        with contextlib.suppress(OSError):
            if had_previous:
                os.replace(previous, data)
            elif not new_data.exists():
                data.unlink()
        raise


@contextlib.contextmanager
def _staging_dir(parent: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=".onnxprune-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report should read like any file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


ModelLike = ir.Model | onnx.ModelProto | str | os.PathLike


def as_model(model: ModelLike) -> tuple[ir.Model, Path | None]:
    """Load ``model`` if it is a path (or convert an ``onnx.ModelProto``); check the structure
    either way, and name unnamed nodes (:func:`~onnxprune.graphutils.name_unnamed_nodes`)."""
    if isinstance(model, onnx.ModelProto):
        model = ir.from_proto(model)
    if isinstance(model, ir.Model):
        normalize_dims(model)
        check_structure(model)
        name_unnamed_nodes(model)
        return model, None
    if not isinstance(model, (str, os.PathLike)):
        raise UsageError(f"a model is a path, an onnx.ModelProto or an onnx_ir.Model, not a {type(model).__name__}")
    path = Path(model)
    loaded = load_model(path)
    check_structure(loaded, str(path))
    name_unnamed_nodes(loaded)
    return loaded, path
