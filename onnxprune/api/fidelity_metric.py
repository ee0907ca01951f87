"""How close a quantized model's outputs stay to the float model's, per kind of output.

* every float output: the mean per-sample cosine similarity (maps, embeddings, boxes);
* classifier-like outputs [N, classes]: top-1 agreement per sample;
* sequence outputs [N, T, classes] whose rows are probability distributions (softmax: CTC
  text recognizers, taggers): argmax agreement per position, what a greedy decoder reads. Not
  for per-anchor detection scores (sigmoids, independent per class): the argmax of an anchor
  whose every score is ~0 is noise, and a detector is judged by its thresholded scores.
* probability-like outputs (every value in [0, 1]: sigmoid scores, probability maps) that are
  not judged by argmax: the IoU of the entries above 0.5, a sigmoid's decision threshold (the
  cosine of mostly-zero score maps says little about the detections).

A :class:`Target` says what is good enough; :func:`measure` returns a :class:`Fidelity` that
names the first output below it. Separate from the guard so that the search (``fidelity_guard``)
and the metric can be changed and tested on their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxprune import runtime, shapes
from onnxprune.calibration.plan import activation_batch

HELD_OUT = 32  # samples compared


@dataclasses.dataclass(frozen=True)
class Target:
    """The least fidelity accepted: cosine for every output, argmax agreement where there is one.

    The default catches destruction (magika's classifier: top-1 agreement 4 %), not loss: on the
    PP-OCR models a stricter default (0.98) kept 128-135 nodes float, multiplied quantize's time
    by 10-20 and gave back no task fidelity beyond the models' own noise floor
    (bench/int8_bench.py); ``--min-fidelity`` asks for more where it pays.
    """

    cosine: float = 0.9
    agreement: float = 0.9

    @classmethod
    def of(cls, min_fidelity: float | None) -> Target:
        """``min_fidelity`` for both measures (as prune's --min-fidelity); None: the default."""
        return cls() if min_fidelity is None else cls(min_fidelity, min_fidelity)


@dataclasses.dataclass
class Fidelity:
    cosine: dict[str, float]
    top1: dict[str, float]  # argmax agreement ([N, C], softmax [N, T, C]) or decision IoU (scores in [0, 1])
    target: Target = dataclasses.field(default_factory=Target)

    def problem(self) -> str | None:
        for name, c in self.cosine.items():
            if c < self.target.cosine:
                return f"output '{name}' cosine {c:.3f} < {self.target.cosine}"
        for name, t in self.top1.items():
            if t < self.target.agreement:
                return f"output '{name}' agreement {t:.1%} < {self.target.agreement:.0%}"
        return None

    def score(self) -> float:
        """The worst margin to the target (>= 0: every output meets it)."""
        margins = [c - self.target.cosine for c in self.cosine.values()]
        margins += [t - self.target.agreement for t in self.top1.values()]
        return min(margins, default=0.0)

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"cosine": self.cosine, "top1": self.top1}


def agreement(r: np.ndarray, c: np.ndarray) -> float | None:
    """Argmax agreement of a classifier ([N, C]) or softmax sequence ([N, T, C]) output, else None."""
    if r.shape != c.shape or r.ndim not in (2, 3) or r.shape[-1] < 2:
        return None
    if r.ndim == 3 and not (r.min() >= 0 and np.allclose(r.sum(-1), 1.0, atol=1e-3)):
        return None  # not a distribution per position (detection scores, raw features)
    return float(np.mean(r.argmax(-1) == c.argmax(-1)))


def decisions(r: np.ndarray, c: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of the entries above ``threshold`` (1.0 when neither has any)."""
    a, b = r > threshold, c > threshold
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


def cosine(r: np.ndarray, c: np.ndarray) -> float:
    """Mean per-sample cosine similarity (two equal vectors, zeros included, count 1)."""
    a, b = r.reshape(len(r), -1).astype(np.float64), c.reshape(len(c), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same = np.all(a == b, axis=1)
    cos = np.where(same, 1.0, np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0))
    return float(np.mean(cos))


def measure(reference: ir.Model, candidate: ir.Model, feeds: Mapping[str, np.ndarray],
            target: Target | None = None, *, reference_outputs: Mapping[str, np.ndarray] | None = None) -> Fidelity:
    """Compare every float output of the two models on ``feeds`` (``reference_outputs``: the
    reference's, already run on these feeds: a search comparing many candidates runs it once)."""
    ref = run(reference, feeds) if reference_outputs is None else reference_outputs
    return compare(ref, run(candidate, feeds), target)


def compare(ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], target: Target | None = None) -> Fidelity:
    """The fidelity of outputs ``cand`` to ``ref`` (arrays by output name, samples first)."""
    cosines, top1 = {}, {}
    for name, r in ref.items():
        c = cand.get(name)
        if c is None or r.dtype.kind != "f" or r.shape != c.shape or r.size == 0:
            continue
        cosines[name] = cosine(r, c)
        agree = agreement(r, c)
        if agree is None and r.size and r.min() >= 0 and r.max() <= 1:
            agree = decisions(r, c)
        if agree is not None:
            top1[name] = agree
    return Fidelity(cosines, top1, target or Target())


def run(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All samples through one session, in batches of the model's fixed batch size if it has
    one, else of the calibration's activation budget (ONNX Runtime's arena keeps the largest
    run's blocks: 32 samples at once tripled magika's peak)."""
    fixed = [d[0] for d in shapes.declared(model).values() if d and isinstance(d[0], int)]
    step = fixed[0] if fixed else min(len(next(iter(feeds.values()))), activation_batch(model))
    names = [o.name or "" for o in model.graph.outputs]
    parts: list[list[np.ndarray]] = []
    with runtime.session(model) as sess:
        for start in range(0, len(next(iter(feeds.values()))) // step * step, step):
            parts.append(runtime.run_session(sess, names, {k: v[start : start + step] for k, v in feeds.items()}))
    return {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}


def held_out(batches: Iterable[Mapping[str, np.ndarray]], skip: int, count: int = HELD_OUT) -> dict[str, np.ndarray]:
    """Up to ``count`` samples after the first ``skip`` (those calibrated on), else the first ones.

    Streamed: only the rows either choice may take are kept (a layout detector's 100
    calibration samples are 580 MB; stacking them all to keep 32 doubled that)."""
    kept: dict[str, list[np.ndarray]] = {}
    index: list[np.ndarray] = []
    first: dict[str, tuple[int, ...]] | None = None
    n = 0
    for batch in batches:
        if first is None:
            first = {k: v.shape[1:] for k, v in batch.items()}
        if any(v.shape[1:] != first[k] for k, v in batch.items()):
            continue  # samples of another shape (dynamic axes) cannot share the array
        size = len(next(iter(batch.values())))
        rows = np.arange(n, n + size)
        wanted = (rows < count) | ((rows >= skip) & (rows < skip + count))
        if wanted.any():
            index.append(rows[wanted])
            for k, v in batch.items():
                kept.setdefault(k, []).append(v[wanted])  # a copy: the batch itself is not kept
        n += size
    start = skip if n - skip >= min(count, n) // 2 and skip < n else 0
    where = np.concatenate(index) if index else np.zeros(0, np.int64)
    chosen = (where >= start) & (where < start + count)
    return {k: np.concatenate(v)[chosen] for k, v in kept.items()}
