"""Where samples come from: in-memory arrays, .npy / .npz files, images, random data.

A dataset is a sequence of *parts* (one file, one item of an iterable...). A part knows how
many samples it holds and the shape/dtype of each array without reading the data, and
reads only the rows asked for (``take``). .npy files and uncompressed .npz members
(``np.savez``) are read row by row from the file; a compressed member (``np.savez_compressed``) is
decompressed whole when first used and dropped when the dataset moves to the next file.
"""

from __future__ import annotations

import copy
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxprune.errors import DataError, first_line


class Part:
    """Rows of named arrays. ``bind`` decides whether the part is one sample or a batch."""

    name: str  # what error messages call it: a file path, 'item 3'...
    n: int = 0
    single: bool = False  # the arrays lack the sample axis (one sample)

    def array_names(self) -> list[str]:
        raise NotImplementedError

    def raw_shape(self, key: str) -> tuple[int, ...] | None:
        """Shape as stored, or None when only known after reading (images)."""
        raise NotImplementedError

    def dtype(self, key: str) -> np.dtype | None:
        raise NotImplementedError

    def _stored_shape(self, key: str) -> tuple[int, ...]:
        shape = self.raw_shape(key)
        assert shape is not None, "parts whose shapes are known only when read bind themselves"
        return shape

    def _read(self, key: str) -> np.ndarray:
        """The stored array (memory-mapped where possible)."""
        raise NotImplementedError

    def bind(
        self, keys: list[str], ranks: Mapping[str, int | None], axes: Mapping[str, int | None] | None = None
    ) -> None:
        """Count samples; ``keys`` are the data keys of the model inputs with their ranks and
        batch axes (0 by default; None: a scalar input, fed as is to every sample)."""
        self.axes = {k: (axes or {}).get(k, 0) for k in keys}
        shapes = {k: self._stored_shape(k) for k in keys}
        batched = {k: (s, axis) for k, s in shapes.items() if (axis := self.axes[k]) is not None}
        self.single = bool(batched) and all(
            (rank := ranks.get(k)) is not None and len(s) == rank - 1 for k, (s, _) in batched.items()
        )
        counts = {}
        for key, (shape, axis) in batched.items():
            if not self.single and len(shape) <= axis:
                where = "first axis" if axis == 0 else f"axis {axis} (the model's batch axis)"
                what = "a scalar" if not shape else f"of shape {list(shape)}"
                raise DataError(f"{self.name}: '{key}' is {what}, expected samples along the {where}")
            counts[key] = 1 if self.single else shape[axis]
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"'{k}': {n}" for k, n in counts.items())
            raise DataError(f"{self.name}: inputs have different numbers of samples ({listed})")
        self.n = next(iter(counts.values()), 1)

    def shape(self, key: str) -> tuple[int, ...] | None:
        shape = self.raw_shape(key)
        axis = getattr(self, "axes", {}).get(key, 0)
        if self.single and shape is not None and axis is not None:
            return (*shape[:axis], 1, *shape[axis:])
        return shape

    def take(self, key: str, rows: np.ndarray) -> np.ndarray:
        array = self._read(key)
        axis = getattr(self, "axes", {}).get(key, 0)
        if axis is None:  # a scalar input: the same for every sample
            return np.asarray(array)
        if self.single:
            return np.expand_dims(np.asarray(array), axis).take(rows, axis)
        if axis == 0:
            return np.asarray(array[rows])
        return np.asarray(array).take(rows, axis)

    def whole(self, key: str) -> np.ndarray:
        """All rows of ``key`` (for labels and extras, which are small)."""
        array = np.asarray(self._read(key))
        return array[None] if self.single or array.ndim == 0 else array

    def release(self) -> None:
        """Drop anything cached; called when the dataset moves on to another part."""


class ArrayPart(Part):
    """Arrays already in memory (one item of an iterable, or a dict of arrays)."""

    def __init__(self, arrays: Mapping[str, object], name: str):
        self.name = name
        self.arrays = {}
        for key, value in arrays.items():
            try:
                self.arrays[str(key)] = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise DataError(f"{name}: '{key}' is not an array ({first_line(exc)})") from None
            if self.arrays[str(key)].dtype.hasobject:
                raise DataError(f"{name}: '{key}' is not a numeric array (ragged or objects)")

    def array_names(self):
        return list(self.arrays)

    def raw_shape(self, key):
        return self.arrays[key].shape

    def dtype(self, key):
        return self.arrays[key].dtype

    def _read(self, key):
        return self.arrays[key]

    def rows(self, start: int, stop: int) -> ArrayPart:
        """Samples [start, stop) only (arrays of other lengths, extras, are kept whole)."""
        clone = copy.copy(self)
        clone.arrays = {k: v[start:stop] if v.ndim and len(v) == self.n else v for k, v in self.arrays.items()}
        clone.n = stop - start
        return clone


class NpyPart(Part):
    """One .npy file holding the single input: one sample or a batch."""

    def __init__(self, path: Path, key: str):
        self.name = str(path)
        self.key = key
        try:
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable .npy file ({first_line(exc)})") from None
        if isinstance(mapped, np.memmap) and mapped.flags.c_contiguous:
            self.array = StoredArray(path, mapped.offset, mapped.shape, mapped.dtype)
        else:
            self.array = mapped
        del mapped

    def array_names(self):
        return [self.key]

    def raw_shape(self, key):
        return self.array.shape

    def dtype(self, key):
        return self.array.dtype

    def _read(self, key):
        return self.array


class NpzPart(Part):
    """One .npz archive: arrays keyed by name, read member by member."""

    def __init__(self, path: Path):
        self.name = str(path)
        self.path = path.absolute()  # read from a worker too, whatever its folder
        self.members = _npz_headers(path)  # key -> (shape, dtype, data offset or None)
        self.loaded: dict[str, np.ndarray] = {}

    def array_names(self):
        return list(self.members)

    def raw_shape(self, key):
        return self.members[key][0]

    def dtype(self, key):
        return self.members[key][1]

    def _read(self, key):
        if key not in self.loaded:
            shape, dtype, offset = self.members[key]
            if offset is not None:  # stored uncompressed: read rows straight from the file
                self.loaded[key] = StoredArray(self.path, offset, shape, dtype)
            else:
                try:
                    with np.load(self.path, allow_pickle=False) as archive:
                        self.loaded[key] = archive[key]
                except (OSError, ValueError, zipfile.BadZipFile) as exc:
                    raise DataError(f"{self.name}: cannot read array '{key}' ({first_line(exc)})") from None
        return self.loaded[key]

    def release(self):
        self.loaded.clear()

    def __getstate__(self):
        return {**self.__dict__, "loaded": {}}  # pickled for a worker: the file, not what was read


class StoredArray:
    """A C-order array at a byte offset of a file, read by rows on demand.

    Reads go through the file, not a memory map: mapped pages that were read stay counted
    in the process's resident memory until unmapped, which would make memory grow with the
    number of samples streamed.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.name, self.offset, self.shape, self.dtype = path, offset, tuple(shape), np.dtype(dtype)
        self.path = Path(path).absolute()  # read from a worker too, whatever its folder
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[np.arange(self.shape[0])] if self.ndim else self._read_scalar()
        return whole if dtype is None else whole.astype(dtype)

    def _read_scalar(self) -> np.ndarray:
        out = np.empty((), self.dtype)
        self._read_into(out, self.offset)
        return out

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        # one read per run of consecutive rows
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
            self._read_into(out[start:stop], self.offset + int(ordered[start]) * self.row_bytes)
        result = np.empty_like(out)
        result[order] = out
        return result

    def _read_into(self, target: np.ndarray, position: int) -> None:
        view = memoryview(target.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # an ndarray is a buffer
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(position)
            done = 0
            while done < len(view):
                n = handle.readinto(view[done:])
                if not n:
                    raise DataError(f"{self.name}: file is truncated (array data ends early)")
                done += n


class ImagePart(Part):
    """One image file: one sample of the model's single input."""

    def __init__(self, path: Path, key: str, preprocess, label: int | None = None):
        self.name = str(path)
        self.path = path.absolute()  # read from a worker too, whatever its folder
        self.key = key
        self.preprocess = preprocess
        self.label = label

    def array_names(self):
        return [self.key]

    def raw_shape(self, key):
        return None

    def dtype(self, key):
        return None

    def bind(self, keys, ranks, axes=None):
        self.axes = {k: (axes or {}).get(k, 0) for k in keys}
        self.n, self.single = 1, True

    def _read(self, key):
        return self.preprocess(self.path)


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, int | None]]:
    """Shape, dtype and (for stored members) the byte offset of each array, without reading it."""
    members = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(member)
                    header_len = member.tell()
                if dtype.hasobject:
                    raise DataError(f"{path}: array '{info.filename[:-4]}' holds Python objects (refused)")
                offset = None  # compressed or Fortran-ordered: np.load reads it whole
                if info.compress_type == zipfile.ZIP_STORED and not fortran:
                    # data = local file header (30 bytes + name + extra field) + .npy header
                    raw.seek(info.header_offset)
                    name_len, extra_len = struct.unpack("<HH", raw.read(30)[26:30])
                    offset = info.header_offset + 30 + name_len + extra_len + header_len
                members[info.filename[:-4]] = (tuple(shape), dtype, offset)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({first_line(exc)})") from None
    if not members:
        raise DataError(f"{path}: .npz file holds no arrays")
    return members
