"""Streaming error statistics between a reference and a candidate output.

Everything is accumulated batch by batch in running sums (and a bounded reservoir for
quantiles), so memory does not grow with the number of samples. With ``r`` the reference,
``c`` the candidate and ``d = c - r`` over all elements seen:

* absolute error ``|d|`` (max, mean, p50/p99 from the reservoir);
* relative error ``|d| / |r|`` over the elements where ``r != 0`` (0/0 is no error, x/0 has
  no finite relative error; those elements are judged by ``atol`` only);
* cosine similarity ``sum(r*c) / sqrt(sum(r^2) * sum(c^2))`` over everything, and the
  smallest per-sample cosine (one sample = one slice along axis 0);
* SQNR ``10 log10(sum(r^2) / sum(d^2))`` in dB (infinite when ``d == 0``);
* mismatches: elements outside ``|d| <= atol + rtol*|r|`` (numpy.isclose), plus elements
  that are NaN/Inf in one model but not the same NaN/Inf in the other;
* for classifier-like outputs (2-D ``[batch, classes]``, float, >= 2 classes): top-1
  agreement (same argmax) and top-k agreement (the reference's top-1 class is among the
  candidate's k best), and accuracy of both against labels when given.
"""

from __future__ import annotations

import math

import numpy as np

RESERVOIR_SIZE = 65536  # elements kept for quantiles: 512 KiB per output, any dataset size


class Reservoir:
    """A uniform random sample of a stream (Vitter's algorithm R, vectorised per batch)."""

    def __init__(self, size: int = RESERVOIR_SIZE, seed: int = 0) -> None:
        self.size = size
        self.data = np.empty(size, dtype=np.float64)
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def add(self, values: np.ndarray) -> None:
        values = values.reshape(-1)
        fill = min(max(self.size - self.seen, 0), values.size)
        self.data[self.seen : self.seen + fill] = values[:fill]
        rest = values[fill:]
        if rest.size:
            # The element with stream index i replaces a uniform slot with probability size/(i+1).
            index = np.arange(self.seen + fill, self.seen + values.size, dtype=np.float64) + 1
            slot = (self._rng.random(rest.size) * index).astype(np.int64)
            keep = slot < self.size
            self.data[slot[keep]] = rest[keep]
        self.seen += values.size

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.data = np.array(self.data)  # unpickled from Ray's object store: read-only

    def merge(self, other: Reservoir) -> Reservoir:
        """A uniform sample of both streams together (in place, returns self).

        While both streams fit, the union is kept whole (quantiles as exact as one pass).
        Otherwise the number drawn from this stream is hypergeometric (how many of a uniform
        ``size``-sample of the union fall in it) and each part is a uniform subset of that
        stream's own uniform sample: again a uniform sample of the union, as one pass gives.
        """
        mine, theirs = self.data[: min(self.seen, self.size)], other.data[: min(other.seen, other.size)]
        if self.seen + other.seen <= self.size:
            self.data[mine.size : mine.size + theirs.size] = theirs
        else:
            take = int(self._rng.hypergeometric(self.seen, other.seen, self.size))
            take = min(max(take, self.size - theirs.size), mine.size)
            merged = np.concatenate([self._rng.choice(mine, take, replace=False),
                                     self._rng.choice(theirs, self.size - take, replace=False)])
            self.data[:] = merged
        self.seen += other.seen
        return self

    def quantile(self, q: float) -> float | None:
        n = min(self.seen, self.size)
        return float(np.quantile(self.data[:n], q)) if n else None


def is_classifier(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[1] >= 2 and np.issubdtype(array.dtype, np.floating)


class OutputStats:
    """Running comparison statistics of one tensor (see the module docstring).

    ``atol``/``rtol`` only decide what counts as a mismatch; ``atol=None`` (no elementwise
    criterion) counts against ``rtol`` alone with atol 0. ``detailed=False`` skips the
    quantile reservoir and the per-sample cosine (layer-wise tables do not show them).
    """

    def __init__(
        self,
        atol: float | None = 0.0,
        rtol: float = 0.0,
        *,
        top_k: int = 5,
        detailed: bool = True,
        seed: int = 0,
    ) -> None:
        self.atol = 0.0 if atol is None else float(atol)
        self.rtol = float(rtol)
        self.top_k = top_k
        self.elements = 0  # elements seen
        self.samples = 0  # slices along axis 0
        self.finite = 0  # elements finite in both
        self.nonfinite_mismatches = 0
        self.mismatches = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.sum_abs_ref = 0.0
        self.max_rel = 0.0
        self.sum_rel = 0.0
        self.rel_count = 0
        self.sum_ref_sq = 0.0
        self.sum_cand_sq = 0.0
        self.sum_dot = 0.0
        self.sum_err_sq = 0.0
        self.min_sample_cosine = math.inf
        self.classifier: bool | None = None
        self.k_used = top_k
        self.top1_hits = 0
        self.topk_hits = 0
        self.labelled = 0
        self.ref_correct = 0
        self.cand_correct = 0
        self.detailed = detailed
        self._abs = Reservoir(seed=seed) if detailed else None
        self._rel = Reservoir(seed=seed + 1) if detailed else None

    def update(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Add one batch; the arrays must have equal shapes (the caller checks and says so)."""
        if reference.shape != candidate.shape:
            raise ValueError(f"shape {candidate.shape} != {reference.shape}")
        if self.classifier is None:
            self.classifier = is_classifier(reference) and is_classifier(candidate)
        if self.classifier:
            self._update_classes(reference, candidate, labels)
        self.samples += reference.shape[0] if reference.ndim else 1
        self.elements += reference.size
        if reference.size == 0:
            return
        r = reference.astype(np.float64, copy=False).reshape(-1)
        c = candidate.astype(np.float64, copy=False).reshape(-1)
        ok = np.isfinite(r) & np.isfinite(c)
        if not ok.all():
            same = (r == c) | (np.isnan(r) & np.isnan(c))  # the same Inf, or NaN in both
            bad = int(np.count_nonzero(~ok & ~same))
            self.nonfinite_mismatches += bad
            self.mismatches += bad
            r, c = r[ok], c[ok]
        self.finite += r.size
        if r.size == 0:
            return
        d = c - r
        abs_d = np.abs(d)
        abs_r = np.abs(r)
        self.mismatches += int(np.count_nonzero(abs_d > self.atol + self.rtol * abs_r))
        self.max_abs = max(self.max_abs, float(abs_d.max()))
        self.sum_abs += float(abs_d.sum())
        self.sum_abs_ref += float(abs_r.sum())
        nonzero = abs_r > 0
        rel = abs_d[nonzero] / abs_r[nonzero]
        if rel.size:
            self.max_rel = max(self.max_rel, float(rel.max()))
            self.sum_rel += float(rel.sum())
            self.rel_count += rel.size
        self.sum_ref_sq += _dot(r, r)
        self.sum_cand_sq += _dot(c, c)
        self.sum_dot += _dot(r, c)
        self.sum_err_sq += _dot(d, d)
        if self.detailed and reference.ndim >= 2 and ok.all():
            self._update_sample_cosine(r.reshape(reference.shape[0], -1), c.reshape(reference.shape[0], -1))
        if self._abs is not None and self._rel is not None:  # both kept when detailed
            self._abs.add(abs_d)
            self._rel.add(rel)

    SUMS = ("elements", "samples", "finite", "nonfinite_mismatches", "mismatches", "sum_abs", "sum_abs_ref",
            "sum_rel", "rel_count", "sum_ref_sq", "sum_cand_sq", "sum_dot", "sum_err_sq", "top1_hits",
            "topk_hits", "labelled", "ref_correct", "cand_correct")

    def merge(self, other: OutputStats) -> OutputStats:
        """Statistics of both streams together (in place, returns self): counts, max and min
        exact, float sums up to the order of addition (about 1e-15 relative), the quantile
        reservoirs as :meth:`Reservoir.merge` says."""
        for name in self.SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.min_sample_cosine = min(self.min_sample_cosine, other.min_sample_cosine)
        if self.classifier is None:
            self.classifier = other.classifier
        if self._abs is not None and other._abs is not None and self._rel is not None and other._rel is not None:
            self._abs.merge(other._abs)
            self._rel.merge(other._rel)
        return self

    def _update_sample_cosine(self, r: np.ndarray, c: np.ndarray) -> None:
        self.min_sample_cosine = min(self.min_sample_cosine, float(np.min(_cosine(
            np.einsum("ij,ij->i", r, c), np.einsum("ij,ij->i", r, r), np.einsum("ij,ij->i", c, c)
        ))))

    def _update_classes(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> None:
        ref_top = np.argmax(reference, axis=1)
        cand_top = np.argmax(candidate, axis=1)
        self.top1_hits += int(np.count_nonzero(ref_top == cand_top))
        k = min(self.top_k, candidate.shape[1])
        self.k_used = k  # top-5 of a 4-class output is top-4
        cand_best = np.argpartition(-candidate, k - 1, axis=1)[:, :k]
        self.topk_hits += int(np.count_nonzero((cand_best == ref_top[:, None]).any(axis=1)))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            self.labelled += labels.size
            self.ref_correct += int(np.count_nonzero(ref_top == labels))
            self.cand_correct += int(np.count_nonzero(cand_top == labels))

    # -- results ---------------------------------------------------------------------------

    @property
    def cosine(self) -> float:
        return float(_cosine(self.sum_dot, self.sum_ref_sq, self.sum_cand_sq))

    @property
    def sqnr_db(self) -> float:
        if self.sum_err_sq == 0:
            return math.inf
        if self.sum_ref_sq == 0:
            return -math.inf
        return 10 * math.log10(self.sum_ref_sq / self.sum_err_sq)

    def summary(self) -> dict:
        """The statistics as a flat dict (keys documented in onnxprune.parity.result)."""
        finite = max(self.finite, 1)
        out = {
            "elements": self.elements,
            "samples": self.samples,
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / finite,
            "p50_abs": self._abs.quantile(0.5) if self._abs else None,
            "p99_abs": self._abs.quantile(0.99) if self._abs else None,
            "max_rel": self.max_rel,
            "mean_rel": self.sum_rel / self.rel_count if self.rel_count else 0.0,
            "p99_rel": self._rel.quantile(0.99) if self._rel else None,
            "mean_abs_reference": self.sum_abs_ref / finite,
            "cosine": self.cosine,
            "cosine_min": min(self.min_sample_cosine, self.cosine),
            "sqnr_db": self.sqnr_db,
            "mismatches": self.mismatches,
            "mismatch_fraction": self.mismatches / self.elements if self.elements else 0.0,
            "nonfinite_mismatches": self.nonfinite_mismatches,
            "top1_agreement": None,
            "topk_agreement": None,
            "top_k": None,
            "accuracy_reference": None,
            "accuracy_candidate": None,
            "accuracy_drop": None,
        }
        if self.classifier and self.samples:
            out["top1_agreement"] = self.top1_hits / self.samples
            out["topk_agreement"] = self.topk_hits / self.samples
            out["top_k"] = self.k_used
        if self.classifier and self.labelled:
            reference, candidate = self.ref_correct / self.labelled, self.cand_correct / self.labelled
            out["accuracy_reference"], out["accuracy_candidate"] = reference, candidate
            out["accuracy_drop"] = reference - candidate
        return out


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum, not BLAS: OpenBLAS threads dot products of long vectors, and its spinning
    # threads made a layer-wise check several times slower on a busy machine.
    return float(np.einsum("i,i->", a, b))


def _cosine(dot, ref_sq, cand_sq):
    """Cosine from sums; two all-zero vectors are identical (1), one all-zero is orthogonal (0)."""
    dot, ref_sq, cand_sq = (np.asarray(x, dtype=np.float64) for x in (dot, ref_sq, cand_sq))
    norm = np.sqrt(ref_sq * cand_sq)
    both_zero = (ref_sq == 0) & (cand_sq == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1), np.where(both_zero, 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)
