"""Never silently destroy: a quantized model whose outputs no longer follow the float model's.

After quantization the result is run beside the float model on held-out samples. When an
output is catastrophically off (cosine < :data:`MIN_COSINE`, or top-1 agreement below
:data:`MIN_TOP1` for a classifier-like output), the layer-wise comparison
(:func:`onnxprune.parity.layerwise.localise`) finds the nodes that *introduce* the error (a
tensor much further from the float one than the tensors it is computed from: LayerNorm's
reciprocal, a softmax's Exp...), those nodes stay float, and the model is quantized again
with the same ranges. A few rounds; if it is still off, everything but the big
matrix products (Conv/MatMul/Gemm) stays float. The report says which nodes and why;
``strict`` fails instead (exit 1, culprits named).

Its own module so that quantize's other refinements (budgets, placement) compose with it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune import runtime, shapes
from onnxprune.errors import ParityError
from onnxprune.parity.inputs import make_feed
from onnxprune.parity.layerwise import localise
from onnxprune.parity.tolerances import Tolerances

MIN_COSINE = 0.9
MIN_TOP1 = 0.9
HELD_OUT = 32  # samples compared (the layer-wise search uses the first LOCALISE of them)
LOCALISE = 4
SECONDS = 90  # the search stops refining after this long (it costs a layer-wise run per round)
LOCAL_DROP = 0.05  # cosine lost by one node beyond its inputs' that makes it a culprit
ROUNDS = 3
MATRIX_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})

Requantize = Callable[[frozenset[str]], ir.Model]  # node names kept float -> quantized model


@dataclasses.dataclass
class Fidelity:
    cosine: dict[str, float]
    top1: dict[str, float]  # classifier-like outputs only

    def problem(self) -> str | None:
        for name, c in self.cosine.items():
            if c < MIN_COSINE:
                return f"output '{name}' cosine {c:.3f} < {MIN_COSINE}"
        for name, t in self.top1.items():
            if t < MIN_TOP1:
                return f"output '{name}' top-1 agreement {t:.1%} < {MIN_TOP1:.0%}"
        return None

    def score(self) -> float:
        return min([*self.cosine.values(), *self.top1.values()], default=1.0)

    def to_dict(self) -> dict:
        return {"cosine": self.cosine, "top1": self.top1}


def measure(reference: ir.Model, candidate: ir.Model, feeds: dict[str, np.ndarray]) -> Fidelity:
    """Mean per-sample cosine of every float output; top-1 agreement of (N, classes) outputs."""
    ref, cand = _run(reference, feeds), _run(candidate, feeds)
    cosine, top1 = {}, {}
    for name, r in ref.items():
        c = cand.get(name)
        if c is None or r.dtype.kind != "f" or r.shape != c.shape or r.size == 0:
            continue
        a, b = r.reshape(len(r), -1).astype(np.float64), c.reshape(len(c), -1).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        same = np.all(a == b, axis=1)  # also covers two zero vectors
        cos = np.where(same, 1.0, np.sum(a * b, axis=1) / np.where(norms > 0, norms, 1.0))
        cosine[name] = float(np.mean(cos))
        if r.ndim == 2 and r.shape[1] > 1:
            top1[name] = float(np.mean(r.argmax(1) == c.argmax(1)))
    return Fidelity(cosine, top1)


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All samples through one session, in batches of the model's fixed batch size if it has one."""
    fixed = [d[0] for d in shapes.declared(model).values() if d and isinstance(d[0], int)]
    step = fixed[0] if fixed else len(next(iter(feeds.values())))
    names = [o.name for o in model.graph.outputs]
    parts: list[list[np.ndarray]] = []
    with runtime.session(model) as sess:
        for start in range(0, len(next(iter(feeds.values()))) // step * step, step):
            parts.append(runtime.run_session(sess, names, {k: v[start : start + step] for k, v in feeds.items()}))
    return {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}


@dataclasses.dataclass
class GuardResult:
    model: ir.Model
    before: Fidelity
    after: Fidelity
    kept_float: dict[str, str]  # node -> why

    def to_dict(self) -> dict:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "kept_float": self.kept_float}


def guard(reference: ir.Model, quantized: ir.Model, feeds: dict[str, np.ndarray], requantize: Requantize,
          *, strict: bool = False, progress: bool = False) -> GuardResult:
    """``reference``: the float model as the quantizer saw it (names match); ``feeds``:
    held-out samples. Returns the model to keep (``quantized`` when it is fine)."""
    first = measure(reference, quantized, feeds)
    problem = first.problem()
    if problem is None:
        return GuardResult(quantized, first, first, {})
    kept: dict[str, str] = {}
    model, fidelity = quantized, first
    best = (first.score(), quantized, first, {})
    small = {k: v[:LOCALISE] for k, v in feeds.items()}
    deadline = time.monotonic() + SECONDS
    for _ in range(ROUNDS):
        if time.monotonic() > deadline:
            break
        found = culprits(reference, model, small, progress)
        new = {n: why for n, why in found.items() if n not in kept}
        if not new:
            break
        kept.update({n: f"{why} ({problem})" for n, why in new.items()})
        model = requantize(frozenset(kept))
        fidelity = measure(reference, model, feeds)
        problem = fidelity.problem()
        best = max(best, (fidelity.score(), model, fidelity, dict(kept)), key=lambda b: b[0])
        if problem is None:
            break
    if problem is not None and time.monotonic() <= deadline:  # last resort: only the matrix products in INT8
        rest = {n.name: f"not a matrix product ({problem})" for n in reference.graph
                if n.op_type not in MATRIX_OPS and n.name and n.name not in kept}
        kept.update(rest)
        model = requantize(frozenset(kept))
        fidelity = measure(reference, model, feeds)
        problem = fidelity.problem()
        best = max(best, (fidelity.score(), model, fidelity, dict(kept)), key=lambda b: b[0])
    _, model, fidelity, kept = best  # keeping nodes float never makes it worse than it was
    if strict:
        named = ", ".join(list(kept)[:5]) + (f" (+{len(kept) - 5} more)" if len(kept) > 5 else "")
        raise ParityError(f"quantization destroys the outputs ({first.problem()}); culprits: {named}")
    return GuardResult(model, first, fidelity, kept)


def culprits(reference: ir.Model, candidate: ir.Model, feeds: dict[str, np.ndarray], progress: bool) -> dict[str, str]:
    """Nodes whose output is much further from the float model than their inputs are."""
    feed = make_feed(feeds, reference, batch_size=LOCALISE)
    report = localise(reference, candidate, feed, Tolerances(atol=None, min_cosine=0.99), progress=progress)
    cosine = {r["name"]: r["cosine"] for r in report["tensors"] if r["cosine"] is not None}
    found = {}
    for node in reference.graph:
        mine = [cosine[v.name] for v in node.outputs if v.name in cosine]
        if not mine or not node.name:
            continue
        inputs = [cosine.get(v.name, 1.0) for v in node.inputs if v is not None and not v.is_initializer()
                  and v.const_value is None]
        worst_in = min(inputs, default=1.0)
        if worst_in - min(mine) > LOCAL_DROP:
            found[node.name] = f"cosine {worst_in:.3f} -> {min(mine):.3f} through this {node.op_type}"
    return found


def held_out(batches: Sequence[dict[str, np.ndarray]], skip: int, count: int = HELD_OUT) -> dict[str, np.ndarray]:
    """Up to ``count`` samples after the first ``skip`` (those calibrated on), else the first ones."""
    stacked: dict[str, list[np.ndarray]] = {}
    shapes = None
    for batch in batches:
        if shapes is None:
            shapes = {k: v.shape[1:] for k, v in batch.items()}
        if any(v.shape[1:] != shapes[k] for k, v in batch.items()):
            continue  # samples of another shape (dynamic axes) cannot share the array
        for k, v in batch.items():
            stacked.setdefault(k, []).append(v)
    arrays = {k: np.concatenate(v) for k, v in stacked.items()}
    n = len(next(iter(arrays.values())))
    start = skip if n - skip >= min(count, n) // 2 and skip < n else 0
    return {k: v[start : start + count] for k, v in arrays.items()}
