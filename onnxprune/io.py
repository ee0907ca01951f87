"""Loading and saving models safely.

Loading goes through onnx-ir, which memory-maps external data instead of reading it, and
refuses files that would make us read outside the model's folder. Saving is atomic: the
model (and its external data) is written into a temporary folder beside the destination
and renamed into place only once complete, so an interrupted run never leaves a
half-written file, and the input model is never overwritten by accident.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxprune.errors import ModelLoadError, UnsafeModelError, UsageError

# Protobuf cannot serialize a message over 2 GiB; stay well clear of it.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of weights above which we save externally


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


def has_external_data(model: ir.Model) -> bool:
    return any(isinstance(t, ir.ExternalTensor) for t in iter_tensors(model))


def _check_external_data(model: ir.Model, path: Path) -> None:
    """Refuse external-data locations outside the model's folder, and missing/short files."""
    base = path.parent.resolve()
    for tensor in iter_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = str(tensor.location)
        if os.path.isabs(location) or location.startswith(("/", "\\")):
            raise UnsafeModelError(
                f"{path}: tensor '{tensor.name}' has external data at absolute path "
                f"'{location}'; only paths inside the model's folder are allowed"
            )
        target = (base / location).resolve()  # resolves '..' and symlinks
        if target != base and base not in target.parents:
            raise UnsafeModelError(
                f"{path}: tensor '{tensor.name}' has external data '{location}' that "
                f"resolves outside the model's folder ({target})"
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{path}: external data file '{location}' of tensor '{tensor.name}' is missing"
            )
        size = target.stat().st_size
        end = (tensor.offset or 0) + tensor.length if tensor.length is not None else None
        if (tensor.offset or 0) > size or (end is not None and end > size):
            raise ModelLoadError(
                f"{path}: external data file '{location}' is too short for tensor "
                f"'{tensor.name}' (needs bytes up to {end}, file has {size})"
            )


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model; raise :class:`ModelLoadError` with a one-line reason on failure."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: not a valid ONNX model (protobuf parse failed: {exc})"
        ) from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelLoadError(f"{path}: not an ONNX model (no graph found; truncated or wrong file?)")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # onnx-ir raises a variety of errors on malformed protos
        raise ModelLoadError(f"{path}: malformed ONNX model ({type(exc).__name__}: {exc})") from None
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    _check_external_data(model, path)
    return model


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output_path(
    path: str | os.PathLike, input_path: str | os.PathLike | None = None, *, overwrite_input: bool = False
) -> Path:
    """Fail early (before any work) on an output path we would refuse to write."""
    path = Path(path)
    if input_path is not None and not overwrite_input and _same_file(path, Path(input_path)):
        raise UsageError(
            f"refusing to overwrite the input model {input_path}; choose another output path"
        )
    if path.is_dir():
        raise UsageError(f"{path}: output path is a folder")
    if not path.parent.exists():
        raise UsageError(f"{path.parent}: output folder does not exist")
    return path


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    input_path: str | os.PathLike | None = None,
    overwrite_input: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Save ``model`` to ``path`` atomically.

    ``external_data=None`` chooses automatically: external data when the weights would push
    the protobuf near its 2 GiB limit or the model already had external data. The external
    data file is ``<name>.data`` beside the model. ``input_path`` is the model the run read;
    writing onto it is refused unless ``overwrite_input`` is set.
    """
    path = check_output_path(path, input_path, overwrite_input=overwrite_input)
    if external_data is None:
        external_data = has_external_data(model) or weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = path.name + ".data"

    with _staging_dir(path.parent) as tmp:
        staged = tmp / path.name
        if external_data:
            ir.save(model, staged, external_data=data_name, size_threshold_bytes=1024)
        else:
            ir.save(model, staged)
        # Data first: a model file on disk must never point at data that is not there yet.
        if (tmp / data_name).exists():
            os.replace(tmp / data_name, path.parent / data_name)
        os.replace(staged, path)
    return path


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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
