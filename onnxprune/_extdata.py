"""External data safety: a model file decides which files we read, so it is checked first.

Every external tensor's location must stay inside the model's folder: no absolute paths,
no '..' leading out, no symlink or hard link to a file outside (onnx-ir applies the same
rules when it reads the data, later and with a less clear error), and the file must exist
and be long enough for the tensor's type and shape.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import onnx_ir as ir

from onnxprune.errors import ModelLoadError, UnsafeModelError

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def check_external_data(tensors: Iterable[ir.TensorProtocol], path: Path) -> None:
    """Refuse external data outside the model's folder (via '..', absolute paths, symlinks
    or hard links) and missing or short files, before anything reads them."""
    base = path.parent.resolve()
    sizes: dict[str, int] = {}
    for tensor in tensors:
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        where = f"{path}: tensor '{tensor.name}'"
        location = str(tensor.location)
        if not location or "\0" in location:
            raise ModelLoadError(f"{where} has an invalid external data location {location!r}")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(location):
            raise UnsafeModelError(
                f"{where} has external data at absolute path '{location}'; only paths inside "
                "the model's folder are allowed"
            )
        lexical = Path(os.path.normpath(base / location))
        target = (base / location).resolve()  # resolves '..' and symlinks
        for candidate, how in ((lexical, ""), (target, " through a symlink")):
            if candidate != base and base not in candidate.parents:
                raise UnsafeModelError(
                    f"{where} has external data '{location}' that resolves{how} outside the "
                    f"model's folder ({candidate}); copy the data next to the model"
                )
        if location not in sizes:
            sizes[location] = _external_file_size(where, location, target)
        offset, length = tensor.offset or 0, tensor.length
        if offset < 0 or (length is not None and length < 0):
            raise ModelLoadError(f"{where} has a negative external data offset or length")
        if length is not None and length != tensor.nbytes:
            raise ModelLoadError(
                f"{where}: external data length {length} does not match its type and shape "
                f"({tensor.dtype}, {list(tensor.shape)}: {tensor.nbytes} bytes)"
            )
        end = offset + tensor.nbytes
        if end > sizes[location]:
            raise ModelLoadError(
                f"{where}: external data file '{location}' is too short (needs bytes up to "
                f"{end}, file has {sizes[location]})"
            )


def _external_file_size(where: str, location: str, target: Path) -> int:
    try:
        stat = target.stat()
    except OSError:
        raise ModelLoadError(f"{where}: external data file '{location}' is missing") from None
    if not target.is_file():
        raise ModelLoadError(f"{where}: external data '{location}' is not a regular file")
    if stat.st_nlink > 1:  # onnx-ir refuses these too, later and less clearly
        raise UnsafeModelError(
            f"{where}: external data file '{location}' has {stat.st_nlink} hard links; "
            "refusing it (a hard link can expose a file from outside the model's folder)"
        )
    return stat.st_size
