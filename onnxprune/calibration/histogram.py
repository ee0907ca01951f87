"""Streaming per-tensor statistics: count, min, max and a bounded histogram.

The histogram lives on a canonical grid: bin ``k`` covers ``[k*w, (k+1)*w)`` with
``w = 2**e``, and ``e`` is the smallest integer such that

    floor(max/w) - floor(min/w) + 1 <= bins        (at most ``bins`` bins span the data)
    w >= max(|min|, |max|) * 2**-20                 (no finer than float32 can resolve)

Both conditions only get harder as the range grows, so ``e`` depends on the final range
alone, never on the order the data came in. When a batch widens the range, ``e`` grows by
``d`` and old bins merge exactly: ``floor(floor(x/w) / 2**d) == floor(x / (w*2**d))``, and
``x * 2**-e`` is exact in floating point. Hence streaming in any batch order, or merging two
partial histograms, gives the very same counts as one pass over all the data; memory is
``bins`` counters per tensor whatever the number of samples. The data range always spans
at least ``bins/2 - 1`` bins (the resolution guarantee). Counting a systematic sample
instead (``update(..., stride=k)``, ``count_sample``) estimates those counts: each sampled
value adds k; count, min and max stay exact.

ONNX Runtime's HistogramCollector instead keeps the first batch's bin width and appends bins
as the range grows (unbounded) or, for entropy, keeps every output of every sample until the
end; see the benchmark in the README.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 8192
PRECISION_BITS = 20  # finest bin relative to max|x|; keeps x * 2**-e below 2**24 (exact in float32)
MIN_EXPONENT = -120  # 2**-e must stay a normal float32


def grid_exponent(low: float, high: float, bins: int) -> int:
    """The smallest valid ``e`` (see the module docstring) for data in [low, high]."""
    absmax = max(abs(low), abs(high))
    e = MIN_EXPONENT
    if absmax > 0:
        e = max(e, math.frexp(absmax)[1] - PRECISION_BITS - 1)
    if high > low:
        e = max(e, math.floor(math.log2((high - low) / bins)) - 1)
    while not _fits(low, high, bins, e):
        e += 1
    return e


def _fits(low: float, high: float, bins: int, e: int) -> bool:
    w = math.ldexp(1.0, e)
    if max(abs(low), abs(high)) > math.ldexp(w, PRECISION_BITS):
        return False
    return math.floor(high / w) - math.floor(low / w) + 1 <= bins


class TensorStats:
    """Running statistics of one tensor's values, updated batch by batch."""

    def __init__(self, bins: int = DEFAULT_BINS, histogram: bool = True):
        if bins < 16:
            raise ValueError(f"histogram bins must be at least 16 (got {bins})")
        self.bins = bins
        self.histogram = histogram
        self.count = 0  # finite values seen
        self.nonfinite = 0  # NaN/Inf values dropped
        self.min = math.inf
        self.max = -math.inf
        self.exponent: int | None = None  # grid: bin k covers [k, k+1) * 2**exponent
        self.first = 0  # index k of counts[0]
        self.counts = np.zeros(0, dtype=np.int64)

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self._grid())

    def _grid(self) -> int:
        """The grid's exponent, set by the first values counted."""
        assert self.exponent is not None, "no values counted yet"
        return self.exponent

    def edges(self) -> np.ndarray:
        """Bin edges, len(counts) + 1 of them."""
        return (self.first + np.arange(len(self.counts) + 1)) * self.width

    def update(self, values: np.ndarray, stride: int = 1) -> None:
        """Add one batch of values (any shape).

        ``stride`` > 1 counts only every stride-th value in the histogram (see
        :meth:`count_sample`); count, min and max always cover every value.
        """
        x = np.asarray(values)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        x = x.reshape(-1)
        if x.size == 0:
            return
        low, high = x.min(), x.max()
        if not (np.isfinite(low) and np.isfinite(high)):
            finite = x[np.isfinite(x)]
            self.nonfinite += x.size - finite.size
            if finite.size == 0:
                return
            x, low, high = finite, finite.min(), finite.max()
        self.update_range(float(low), float(high), count=x.size)
        self.count_sample(x[::stride], stride)

    def count_sample(self, sample: np.ndarray, stride: int = 1) -> None:
        """Count a systematic sample (every ``stride``-th value) of a batch already in the range.

        Each sampled value stands for ``stride`` values, so the counts estimate those of all
        values and merge with exact ones. ``update_range`` with the batch's exact min/max
        must come first (the grid has to cover the sample).
        """
        if self.histogram and sample.size:
            self._count(sample.reshape(-1), stride)

    def _count(self, x: np.ndarray, weight: int = 1, chunk: int = 1 << 16) -> None:
        """Add ``weight`` per value of x: bin = floor(x * 2**-e) - first, all steps exact.

        Chunked so the temporaries stay in cache (faster than whole-array passes).
        """
        scale, first = x.dtype.type(math.ldexp(1.0, -self._grid())), x.dtype.type(self.first)
        scratch = np.empty(min(chunk, x.size), dtype=x.dtype)
        counts = np.zeros_like(self.counts)
        for start in range(0, x.size, chunk):
            piece = x[start : start + chunk]
            t = scratch[: piece.size]
            np.multiply(piece, scale, out=t)  # exact: a power of two, |t| < 2**21
            np.floor(t, out=t)
            t -= first  # integers below 2**24: exact
            counts += np.bincount(t.astype(np.intp), minlength=len(counts))
        self.counts += counts * weight

    def update_range(self, low: float, high: float, count: int = 0) -> None:
        """Widen the range (also used when min/max were reduced inside the model)."""
        self.count += count
        self.min, self.max = min(self.min, low), max(self.max, high)
        if self.histogram:
            self._regrid(grid_exponent(self.min, self.max, self.bins))

    def merge(self, other: TensorStats) -> TensorStats:
        """Statistics of the union of both streams (in place, returns self)."""
        if other.count == 0 and other.nonfinite == 0:
            return self
        self.histogram = self.histogram and other.histogram
        self.nonfinite += other.nonfinite
        if other.count == 0:
            return self
        self.update_range(other.min, other.max, count=other.count)
        if self.histogram:
            other = other.copy()
            other._regrid(self._grid(), self.first, len(self.counts))
            self.counts += other.counts
        return self

    def copy(self) -> TensorStats:
        clone = TensorStats.__new__(TensorStats)
        clone.__dict__.update(self.__dict__)
        clone.counts = self.counts.copy()
        return clone

    def _regrid(self, exponent: int, first: int | None = None, length: int | None = None) -> None:
        """Move to a coarser grid (exact bin merging) and cover [min, max] (or the given span)."""
        if self.exponent is not None and exponent > self.exponent and len(self.counts):
            shift = exponent - self.exponent
            merged = (self.first + np.arange(len(self.counts))) >> shift  # floor division by 2**shift
            start = int(merged[0])
            self.counts = np.bincount(merged - start, weights=self.counts).astype(np.int64)
            self.first = start
        elif self.exponent is not None and exponent < self.exponent:
            raise AssertionError("the grid only ever gets coarser")
        self.exponent = exponent
        w = self.width
        if first is None or length is None:  # (both or neither are given)
            first = math.floor(self.min / w)
            length = math.floor(self.max / w) - first + 1
        # pad to [first, first + length): the data only ever extends the span
        counts = np.zeros(length, dtype=np.int64)
        if len(self.counts):
            offset = self.first - first
            counts[offset : offset + len(self.counts)] = self.counts
        self.counts, self.first = counts, first

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Counts of |x| on bins [j*w, (j+1)*w), j >= 0, and w (negative bins folded over)."""
        k = self.first + np.arange(len(self.counts))
        j = np.where(k >= 0, k, -k - 1)
        return np.bincount(j, weights=self.counts).astype(np.int64), self.width

    def summary(self) -> dict:
        return {"count": self.count, "min": self.min, "max": self.max, "nonfinite": self.nonfinite}
