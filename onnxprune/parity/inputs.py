"""The batches a parity check runs on: a dataset, plain arrays, or random inputs.

A :class:`Feed` can be iterated more than once (the layer-wise pass reads the data again)
and yields ``(feeds, labels)`` per batch, never the whole dataset at once.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.calibration.data import Dataset, open_dataset
from onnxprune.errors import DataError, UsageError
from onnxprune.parity.labels import LABEL_KEYS, as_class_indices, classifier_classes

RANDOM_SAMPLES = 16  # without data: enough to exercise every output, cheap to run
Batch = tuple[dict[str, np.ndarray], "np.ndarray | None"]


@dataclasses.dataclass
class Feed:
    description: str
    samples: int
    batch_size: int
    synthetic: bool
    labelled: bool
    _batches: Callable[[], Iterator[Batch]]
    notes: list[str] = dataclasses.field(default_factory=list)
    dataset: Dataset | None = None  # what `part` cuts: the dataset and its labels ...
    label_array: np.ndarray | None = None
    seed: int = 0  # ... or the seed of random batches

    def part(self, start: int, stop: int) -> FeedPart:
        """Samples ``[start, stop)`` (``start`` a multiple of the batch size) for a worker."""
        labels = None if self.label_array is None else self.label_array[start:stop]
        dataset = None if self.synthetic or self.dataset is None else self.dataset.subset(start, stop)
        return FeedPart(dataset, labels, self.seed, start, stop, self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self._batches()

    @property
    def num_batches(self) -> int:
        return -(-self.samples // self.batch_size)

    def to_dict(self) -> dict:
        return {
            "source": self.description,
            "samples": self.samples,
            "batch_size": self.batch_size,
            "synthetic": self.synthetic,
            "labels": self.labelled,
        }


def make_feed(
    data,
    model: ir.Model,
    *,
    samples: int | None = None,
    batch_size: int = 32,
    labels: str | np.ndarray | None = None,
    preprocess=None,
    seed: int = 0,
) -> Feed:
    """Batches from ``data``: None (random), a path or Dataset (onnxprune.calibration), a
    mapping ``{input name: array}`` (first axis = samples) or an iterable of such dicts (a
    Feed is returned as it is). Without ``labels``, an array named ``labels`` in the data is
    used (and said in the notes). Labels are class indices or one-hot rows, checked here."""
    if isinstance(data, Feed):
        return data
    if samples is not None and samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if data is None:
        if labels is not None:
            raise UsageError("labels need --data: random inputs have no labels")
        return _random_feed(model, samples or RANDOM_SAMPLES, batch_size, seed)
    return _dataset_feed(data, model, samples, batch_size, labels, preprocess)


def _random_feed(model: ir.Model, samples: int, batch_size: int, seed: int) -> Feed:
    first_dims = {shape[0] for shape, _ in runtime.input_specs(model).values() if shape}
    batch_size = next((d for d in first_dims if isinstance(d, int)), batch_size)

    def batches() -> Iterator[Batch]:
        for i, start in enumerate(range(0, samples, batch_size)):
            size = min(batch_size, samples - start)
            yield runtime.random_inputs(model, batch=size, seed=seed + i), None

    note = ("no --data: random standard-normal inputs; this only makes sense for exact "
            "comparisons (value ranges, top-1 and accuracy mean nothing on noise)")
    return Feed(f"random (seed {seed})", samples, batch_size, True, False, batches, [note], seed=seed)


def _dataset_feed(data, model: ir.Model, samples: int | None, batch_size: int, labels, preprocess) -> Feed:
    """``data`` opened with onnxprune.calibration's ``open_dataset`` (which validates it
    against the model), or a Dataset already open."""
    label_array = np.asarray(labels) if isinstance(labels, np.ndarray) else None
    notes = []
    if isinstance(data, Dataset):
        dataset = data
    else:
        with warnings.catch_warnings(record=True) as caught:  # e.g. samples dropped: a note
            warnings.simplefilter("always")
            dataset = open_dataset(data, model, limit=samples, preprocess=preprocess,
                                   labels=labels if isinstance(labels, str) else None)
        notes = [str(w.message) for w in caught]
    notes += [n for n in getattr(dataset, "notes", []) if n not in notes]
    if label_array is None and labels is not None:
        label_array = dataset.labels
    elif labels is None and dataset.classes is None:
        found = next((k for k in LABEL_KEYS if k in dataset.extra_names()), None)
        if found is not None:
            label_array = dataset.extra(found)
            notes.append(f"labels: the '{found}' array of the data (found without --labels)")
    if label_array is not None:
        label_array = as_class_indices(label_array, classifier_classes(model),
                                       f"labels '{labels}'" if isinstance(labels, str) else "labels")
    n = len(dataset) if samples is None else min(len(dataset), samples)
    if label_array is not None and len(label_array) < n:
        raise DataError(f"labels have {len(label_array)} entries but the data has {n} samples")
    batch_size = dataset.fixed_batch or batch_size

    def batches() -> Iterator[Batch]:
        offset = 0
        for feeds in dataset.batches(batch_size):
            size = min(dataset.batch_len(feeds), n - offset)
            if size <= 0:
                return
            yield (feeds if size == dataset.batch_len(feeds) else dataset.head(feeds, size),
                   None if label_array is None else label_array[offset : offset + size])
            offset += size

    return Feed(f"{dataset.name} ({len(dataset)} samples)", n, batch_size, False,
                label_array is not None, batches, notes, dataset=dataset, label_array=label_array)


@dataclasses.dataclass
class FeedPart:
    """A range of a feed's samples as a worker iterates it: the very batches (and labels, and
    random seeds) the whole feed yields for that range."""

    dataset: Dataset | None  # None: random inputs
    labels: np.ndarray | None
    seed: int
    start: int
    stop: int
    batch_size: int

    def batches(self, model: ir.Model) -> Iterator[Batch]:
        if self.dataset is None:
            first = self.start // self.batch_size
            for i, start in enumerate(range(self.start, self.stop, self.batch_size), first):
                size = min(self.batch_size, self.stop - start)
                yield runtime.random_inputs(model, batch=size, seed=self.seed + i), None
            return
        self.dataset.attach(model)
        offset = 0
        for feeds in self.dataset.batches(self.batch_size):
            size = self.dataset.batch_len(feeds)
            yield feeds, None if self.labels is None else self.labels[offset : offset + size]
            offset += size
