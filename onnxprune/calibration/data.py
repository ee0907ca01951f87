"""Sample datasets for calibration, parity checks and data-driven pruning.

``open_dataset`` accepts an ``.npz`` file (arrays keyed by input name, samples along the
batch axis), a folder of ``.npy`` / ``.npz`` files, a folder of images (flat, or one
sub-folder per class), a dict of arrays, or any iterable of ``{input name: array}`` dicts
(one sample or a batch each). A file or dict can be a complete feed, as ONNX Runtime's
``CalibrationDataReader`` hands them out: every array of its input's full rank, batch
dimension included, wherever the model has it (a recurrent state [2, batch, 128]), scalar
inputs as they are. Batches are cut and joined along each input's batch axis; samples with
different scalar inputs never share one; a model whose batch is fixed gets batches of that
size. Whatever the source, ``Dataset.batches`` streams batches:
stored arrays are read row by row from their files, compressed ones and images one file
at a time, so memory does not grow with the size of the dataset.

Data is checked against the model as it is opened (names, per-sample shapes, dtypes, from
the file headers) and as it streams (NaN/Inf, shapes of decoded images). Every problem is a
:class:`~onnxprune.errors.DataError` naming the input and what was expected.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxprune.calibration.images import Preprocess, is_image
from onnxprune.calibration.sources import ArrayPart, ImagePart, NpyPart, NpzPart, Part
from onnxprune.calibration.validation import InputSpec, check_batch, model_inputs
from onnxprune.errors import DataError, UsageError
from onnxprune.runtime import random_inputs

__all__ = ["Dataset", "Preprocess", "open_dataset"]

DEFAULT_SYNTHETIC_SAMPLES = 32


class Dataset:
    """Samples for a model, streamed in batches (see :func:`open_dataset`)."""

    def __init__(
        self,
        parts: list[Part],
        specs: dict[str, InputSpec] | None,
        *,
        name: str,
        limit: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        labels: str | None = None,
        classes: list[str] | None = None,
    ):
        self.name = name
        self.classes = classes
        self._parts = parts
        self._labels_key = labels
        first = parts[0]
        self.notes: list[str] = []  # what was done to the data that the user should see
        self._keys = _match_inputs(first, specs, labels)  # model input -> data key
        self.input_names = list(self._keys)
        self._specs = specs or {}
        ranks = {key: self._specs[i].rank if i in self._specs else None for i, key in self._keys.items()}
        self.batch_axes = {i: self._specs[i].batch_axis if i in self._specs else 0 for i in self._keys}
        axes = {key: self.batch_axes[i] for i, key in self._keys.items()}
        for part in parts:
            missing = [i for i, key in self._keys.items() if key not in part.array_names()]
            if missing:
                raise DataError(f"{part.name}: model input '{missing[0]}' is missing "
                                f"(data has: {_listed(part.array_names())})")
            part.bind(list(self._keys.values()), ranks, axes)
            for input_name, key in self._keys.items():
                if input_name in self._specs:
                    spec = self._specs[input_name]
                    spec.check_static(part.shape(key), part.dtype(key), part.name)
                    given = part.dtype(key)
                    if given is not None and spec.dtype is not None and np.dtype(given).kind in "iub" \
                            and spec.dtype.kind == "f" and not self.notes:
                        self.notes.append(
                            f"input '{input_name}': {part.name} holds {np.dtype(given).name} values, cast to "
                            f"{spec.dtype.name} as they are (no scaling; images: --preprocess 'scale=1/255,...')")
        counts = np.array([p.n for p in parts], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)])
        total = int(self._offsets[-1])
        order = np.random.default_rng(seed).permutation(total) if shuffle else np.arange(total)
        if limit is not None:
            if limit < 1:
                raise UsageError(f"sample limit must be at least 1 (got {limit})")
            order = order[:limit]
        self.fixed_batch = _fixed_batch(self._specs)
        if self.fixed_batch and len(order) % self.fixed_batch:
            kept = len(order) - len(order) % self.fixed_batch
            if kept == 0:
                raise DataError(
                    f"{name}: the model takes batches of exactly {self.fixed_batch} samples; the data has {len(order)}"
                )
            warnings.warn(
                f"the model takes batches of exactly {self.fixed_batch} samples: using {kept} of {len(order)} samples",
                stacklevel=3,
            )
            order = order[:kept]
        if len(order) == 0:
            raise DataError(f"{name}: the dataset is empty (no samples)")
        self._order = order
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, samples={len(self)}, inputs={self.input_names})"

    def batches(self, batch_size: int = 32) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``{input name: array}`` batches of up to ``batch_size`` samples.

        A model with a fixed batch dimension gets batches of exactly that size. Samples of
        different shapes (dynamic axes) never share a batch, so a batch can be smaller.
        """
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1 (got {batch_size})")
        size = self.fixed_batch or batch_size
        previous: Part | None = None
        try:
            for start in range(0, len(self._order), size):
                index = self._order[start : start + size]
                part_ids = np.searchsorted(self._offsets, index, side="right") - 1
                pieces = []
                for run in _runs(part_ids):
                    part = self._parts[part_ids[run[0]]]
                    if previous is not None and previous is not part:
                        previous.release()  # one decompressed file in memory at a time
                    previous = part
                    rows = index[run] - self._offsets[part_ids[run[0]]]
                    arrays = {name: part.take(key, rows) for name, key in self._keys.items()}
                    pieces.append(check_batch(arrays, self._specs, part.name, index[run], rows, part.n > 1))
                yield from _stack_same_shapes(pieces, self.batch_axes)
        finally:  # also when the caller stops early
            if previous is not None:
                previous.release()

    def batch_len(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Samples in a batch that ``batches`` yielded (along each input's batch axis)."""
        for name, array in feeds.items():
            axis = self.batch_axes.get(name, 0)
            if axis is not None:
                return array.shape[axis]
        return 1

    def head(self, feeds: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        """The first ``size`` samples of a batch (scalar inputs kept whole)."""
        axes = {name: self.batch_axes.get(name, 0) for name in feeds}
        return {k: v if axes[k] is None else v.take(np.arange(size), axes[k]) for k, v in feeds.items()}

    def subset(self, start: int, stop: int) -> Dataset:
        """Samples ``[start, stop)`` (in ``batches`` order) as a dataset of their own, holding
        only the parts they come from (in-memory arrays cut to the rows used): what a worker
        gets, pickled."""
        order = self._order[start:stop]
        part_ids = np.searchsorted(self._offsets, order, side="right") - 1
        parts, offsets, new_order = [], [0], np.empty_like(order)
        for pid in np.unique(part_ids):
            part, here = self._parts[pid], part_ids == pid
            rows = order[here] - self._offsets[pid]
            low, high = int(rows.min()), int(rows.max()) + 1
            if isinstance(part, ArrayPart) and not part.single and (low > 0 or high < part.n):
                part, rows = part.rows(low, high), rows - low
            new_order[here] = offsets[-1] + rows
            parts.append(part)
            offsets.append(offsets[-1] + part.n)
        clone = copy.copy(self)
        clone._parts, clone._offsets, clone._order, clone._cache = parts, np.array(offsets), new_order, {}
        return clone

    def attach(self, model: ir.Model) -> None:
        """Give random-data parts their model again after pickling (they do not carry it)."""
        for part in self._parts:
            if isinstance(part, _SyntheticPart):
                part.model = model

    def ort_reader(self, batch_size: int = 1) -> _OrtReader:
        """This data as ONNX Runtime's ``CalibrationDataReader`` (``get_next()``), e.g. for
        ``onnxruntime.quantization.quantize_static``, which reads one batch per call."""
        return _OrtReader(self, batch_size)

    @property
    def labels(self) -> np.ndarray | None:
        """Labels aligned with the samples as ``batches`` yields them (None without labels)."""
        if self.classes is not None:
            return np.array([_label(p) for p in self._parts], dtype=np.int64)[self._order]
        return self.extra(self._labels_key) if self._labels_key else None

    def extra_names(self) -> list[str]:
        """The source's arrays that feed no model input (labels, ids...)."""
        used = set(self._keys.values())
        return [k for k in self._parts[0].array_names() if k not in used]

    def extra(self, key: str) -> np.ndarray:
        """A non-input array of the source (labels, ids...), aligned with the samples."""
        if key not in self._cache:
            columns = []
            for part in self._parts:
                if key not in part.array_names():
                    raise DataError(f"{part.name}: no array '{key}' (data has: {_listed(part.array_names())})")
                column = part.whole(key)
                if len(column) != part.n:
                    raise DataError(f"{part.name}: '{key}' has {len(column)} rows but the inputs have {part.n} samples")
                columns.append(column)
            self._cache[key] = np.concatenate(columns)
        return self._cache[key][self._order]


def open_dataset(
    source,
    model: ir.Model | None = None,
    *,
    limit: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    labels: str | None = None,
    preprocess: Preprocess | str | None = None,
    synthetic: bool = False,
) -> Dataset:
    """Open ``source`` as samples for ``model`` (validated against its inputs when given).

    ``source``: an .npz path, a folder of .npy/.npz files or images, a dict of arrays, or an
    iterable of ``{input name: array}`` dicts. A one-shot iterator (a generator) is read into
    memory once, up to ``limit`` samples; pass files to stream larger data.
    ``labels``: name of a non-input array holding labels (image folders: the class folders).
    ``synthetic=True``: random inputs from the model's input shapes, no source; ranges
    calibrated on them are meaningless, hence the explicit opt-in and the warning.
    """
    specs = model_inputs(model) if model is not None else None
    if isinstance(preprocess, str):
        preprocess = Preprocess.parse(preprocess)
    classes = None
    if synthetic:
        if source is not None:
            raise UsageError("synthetic=True makes random data; do not pass a data source as well")
        if model is None or specs is None:
            raise UsageError("synthetic data needs the model (its input shapes)")
        warnings.warn(
            "calibrating on synthetic random inputs: activation ranges will not match real data",
            stacklevel=2,
        )
        parts: list[Part] = [_SyntheticPart(model, limit or DEFAULT_SYNTHETIC_SAMPLES, seed)]
        name = "synthetic"
    elif source is None:
        raise UsageError("no data given (pass a file, a folder or arrays, or synthetic=True)")
    elif isinstance(source, (str, os.PathLike)):
        name = str(source)
        parts, classes = _path_parts(Path(source), specs, preprocess)
    elif isinstance(source, Mapping):
        name = "arrays"
        parts = [ArrayPart(source, "arrays")]
    elif isinstance(source, np.ndarray):
        name = "array"
        parts = [ArrayPart({_single_input(specs, "an array"): source}, "array")]
    elif isinstance(source, Iterable):
        name = "iterable"
        parts = _iterable_parts(source, specs, limit)
    else:
        raise UsageError(f"cannot read data from a {type(source).__name__}")
    if not parts:
        raise DataError(f"{name}: the dataset is empty (no samples)")
    if classes is not None and labels is not None:
        labels = None  # image folders take labels from their class sub-folders
    elif labels is not None and any(isinstance(p, ImagePart) for p in parts):
        raise DataError(f"{name}: labels of an image folder come from class sub-folders; it has none")
    dataset = Dataset(parts, specs, name=name, limit=limit, shuffle=shuffle, seed=seed, labels=labels, classes=classes)
    image = next((p for p in parts if isinstance(p, ImagePart)), None)
    if image is not None:
        given = "--preprocess" if preprocess is not None else "default, no --preprocess given"
        dataset.notes.append(f"images preprocessed ({given}): {image.preprocess.describe()}")
    return dataset


def _path_parts(path: Path, specs, preprocess) -> tuple[list[Part], list[str] | None]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        return [_file_part(path, specs, preprocess)], None
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file()]
    arrays = [p for p in files if p.suffix.lower() in (".npy", ".npz")]
    images = [p for p in files if is_image(p)]
    class_dirs = [d for d in entries if d.is_dir() and any(is_image(f) for f in d.iterdir())]
    if arrays and (images or class_dirs):
        raise DataError(f"{path}: mixes array files and images; use one kind per folder")
    if images and class_dirs:
        raise DataError(f"{path}: has both loose images and class sub-folders; use one layout")
    if arrays:
        return [_file_part(p, specs, preprocess) for p in arrays], None
    if images:
        return [_file_part(p, specs, preprocess) for p in images], None
    if class_dirs:
        classes = [d.name for d in class_dirs]
        parts: list[Part] = [
            _image_part(f, specs, preprocess, label)
            for label, d in enumerate(class_dirs)
            for f in sorted(d.iterdir())
            if f.is_file() and is_image(f)
        ]
        return parts, classes
    raise DataError(f"{path}: no .npy, .npz or image files found")


def _file_part(path: Path, specs, preprocess) -> Part:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return NpzPart(path)
    if suffix == ".npy":
        return NpyPart(path, _single_input(specs, f"{path.name} (.npy holds one array)"))
    if is_image(path):
        return _image_part(path, specs, preprocess)
    raise DataError(f"{path}: unknown data format '{suffix}' (expected .npz, .npy, an image, or a folder)")


def _image_part(path: Path, specs, preprocess, label: int | None = None) -> ImagePart:
    name = _single_input(specs, f"images ({path.name})")
    spec = (specs or {}).get(name)
    prep = (preprocess or Preprocess()).for_model(spec.shape if spec else (), spec.dtype if spec else None)
    return ImagePart(path, name, prep, label)


def _iterable_parts(items: Iterable, specs, limit: int | None) -> list[Part]:
    parts: list[Part] = []
    for i, item in enumerate(items):
        if limit is not None and i >= limit:  # every item holds at least one sample
            break
        if isinstance(item, np.ndarray):
            item = {_single_input(specs, f"item {i} (a bare array)"): item}
        if not isinstance(item, Mapping):
            raise DataError(f"item {i} is a {type(item).__name__}; expected a dict {{input name: array}}")
        parts.append(ArrayPart(item, f"item {i}"))
    return parts


def _single_input(specs: dict[str, InputSpec] | None, what: str) -> str:
    if specs is None:
        return "input"
    if len(specs) != 1:
        raise DataError(f"{what} can only feed a single-input model; this one has inputs {_listed(specs)}")
    return next(iter(specs))


def _match_inputs(part: Part, specs, labels: str | None) -> dict[str, str]:
    """Model input name -> data key (a single-input model also takes an unnamed 'arr_0')."""
    keys = part.array_names()
    if labels is not None and labels not in keys:
        raise DataError(f"{part.name}: labels '{labels}' not found (data has: {_listed(keys)})")
    if specs is None:
        return {k: k for k in keys if k != labels}
    if labels is not None and labels in specs:
        raise DataError(f"labels '{labels}' is a model input; name the array holding the labels")
    missing = [name for name in specs if name not in keys]
    if missing and len(specs) == 1 and "arr_0" in keys:  # np.savez(path, array): unnamed
        return {missing[0]: "arr_0"}
    if missing:
        raise DataError(f"{part.name}: model input '{missing[0]}' is missing (data has: {_listed(keys)})")
    return {name: name for name in specs}


def _label(part: Part) -> int | None:
    assert isinstance(part, ImagePart)  # class folders hold images only
    return part.label


def _fixed_batch(specs: dict[str, InputSpec]) -> int | None:
    batch_dims = (s.shape[s.batch_axis] for s in specs.values() if s.shape and s.batch_axis is not None)
    sizes = {d for d in batch_dims if isinstance(d, int) and d > 0}  # -1 (Paddle exports) is dynamic
    if len(sizes) > 1:
        raise DataError(f"model inputs have different fixed batch sizes {sorted(sizes)}")
    return sizes.pop() if sizes else None


def _runs(ids: np.ndarray) -> list[np.ndarray]:
    """Positions of ``ids`` split into runs of equal consecutive values."""
    return np.split(np.arange(len(ids)), np.flatnonzero(np.diff(ids)) + 1)


def _stack_same_shapes(
    pieces: list[dict[str, np.ndarray]], axes: dict[str, int | None]
) -> Iterator[dict[str, np.ndarray]]:
    """Concatenate consecutive pieces whose arrays have equal per-sample shapes (and equal
    scalar inputs) along each input's batch axis."""
    group: list[dict[str, np.ndarray]] = []
    for piece in pieces:
        if group and any(not _same_kind(piece[k], group[0][k], axes.get(k, 0)) for k in piece):
            yield _concat(group, axes)
            group = []
        group.append(piece)
    if group:
        yield _concat(group, axes)


def _same_kind(a: np.ndarray, b: np.ndarray, axis: int | None) -> bool:
    if axis is None:
        return a.shape == b.shape and np.array_equal(a, b)
    return a.shape[:axis] + a.shape[axis + 1 :] == b.shape[:axis] + b.shape[axis + 1 :]


def _concat(group: list[dict[str, np.ndarray]], axes: dict[str, int | None]) -> dict[str, np.ndarray]:
    if len(group) == 1:
        return group[0]
    return {
        k: group[0][k] if axes.get(k, 0) is None else np.concatenate([p[k] for p in group], axes.get(k, 0))
        for k in group[0]
    }


def _listed(names: Iterable[str]) -> str:
    names = list(names)
    return ", ".join(f"'{n}'" for n in names) if names else "nothing"


class _OrtReader:
    """Duck-typed ``onnxruntime.quantization.CalibrationDataReader`` over a dataset."""

    def __init__(self, dataset: Dataset, batch_size: int):
        self.dataset, self.batch_size = dataset, batch_size
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self.dataset.batches(self.batch_size)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / (self.dataset.fixed_batch or self.batch_size))


class _SyntheticPart(Part):
    """Random samples from the model's input shapes (seeded per sample: order-independent)."""

    def __init__(self, model: ir.Model, n: int, seed: int):
        self.name, self.model, self.seed, self.count = "synthetic", model, seed, n
        self.specs = model_inputs(model)

    def array_names(self):
        return list(self.specs)

    def raw_shape(self, key):
        spec = self.specs[key]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        if spec.batch_axis is not None:
            shape[spec.batch_axis] = self.count
        return tuple(shape)

    def dtype(self, key):
        return self.specs[key].dtype

    def __getstate__(self):
        return {**self.__dict__, "model": None}  # a worker has the model: see Dataset.attach

    def take(self, key, rows):
        axis = self.specs[key].batch_axis
        if axis is None:
            return np.asarray(random_inputs(self.model, 1, seed=self.seed)[key])
        pieces = [random_inputs(self.model, 1, seed=self.seed + int(r))[key] for r in rows]
        return np.concatenate([np.take(p, [0], axis) for p in pieces], axis)

