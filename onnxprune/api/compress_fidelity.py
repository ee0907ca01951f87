"""compress's one contract with its stages' guards: the final model is judged by the measure
and the target the quantize guard holds (:mod:`.fidelity_metric`: cosine per output, argmax
agreement for classifier and softmax-sequence outputs, decision IoU for scores in [0, 1]; 0.9
by default), on the evaluation data.

Before, the final check was the ``int8`` preset (cosine 0.99, top-1 98 %) while the guards
aimed at 0.9: the guards passed and compress then failed the run (PP-OCR, layout, VAD:
exit 1 at cosine 0.95 with the task intact). Now, when the final model misses the target,
the quantize stage runs again with its guard aiming higher (the guard measured against the
model it quantized, on calibration samples held out; the composition with pruning, or other
samples, can still land below), keeping more nodes float; the most faithful result is kept.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.api.fidelity_metric import Fidelity, Target, compare

SAMPLES = 256  # evaluation samples compared at most
RETRIES = 2  # quantize runs again at most this often, its guard's target halving the loss allowed each time

Batches = Iterable[tuple[dict[str, np.ndarray], object]]


def measure_batches(reference: ir.Model, candidate: ir.Model, batches: Batches, batch_size: int,
                    target: Target) -> Fidelity:
    """The fidelity of ``candidate`` to ``reference`` over (up to :data:`SAMPLES` samples of)
    ``batches`` of complete feeds (a recurrent state whose batch axis is not the first
    included: each batch runs as it is, outputs are stacked after)."""
    names = [o.name or "" for o in reference.graph.outputs]
    refs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    cands: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with runtime.session(reference) as r_sess, runtime.session(candidate) as c_sess:
        for feeds, _ in itertools.islice(batches, max(1, SAMPLES // max(batch_size, 1))):
            for store, sess in ((refs, r_sess), (cands, c_sess)):
                for name, out in zip(names, runtime.run_session(sess, names, feeds)):
                    store[name].append(np.asarray(out))
    return compare(_stack(refs), _stack(cands), target)


def _stack(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Each output's batches along axis 0; those of another shape beyond it (a last, smaller
    batch of a state whose batch axis is not the first) are left out, as held-out data does."""
    return {n: np.concatenate([a for a in v if a.shape[1:] == v[0].shape[1:]])
            for n, v in parts.items() if v and v[0].ndim}


def tighter(target: Target, attempt: int) -> float:
    """The quantize guard's target on retry ``attempt`` (1, 2, ...): the loss allowed halved each time."""
    worst = min(target.cosine, target.agreement)
    return 1 - (1 - worst) / 2**attempt


def hold(fidelity: Fidelity, requantize: Callable[[float], tuple[object, Fidelity]] | None,
         target: Target) -> tuple[object | None, Fidelity, list[dict]]:
    """Re-quantize with a stricter guard until ``target`` holds (at most :data:`RETRIES` times).
    Returns the better stage result (None: keep the first), its fidelity, and every try."""
    tries: list[dict] = []
    best: tuple[object | None, Fidelity] = (None, fidelity)
    for attempt in range(1, RETRIES + 1):
        if best[1].problem() is None or requantize is None:
            break
        aim = tighter(target, attempt)
        result, found = requantize(aim)
        tries.append({"guard_target": aim, "fidelity": found.to_dict(), "holds": found.problem() is None})
        if found.score() > best[1].score():
            best = (result, found)
    return best[0], best[1], tries
