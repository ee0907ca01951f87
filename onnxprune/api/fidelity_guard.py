"""Never silently destroy: keep in float the nodes whose INT8 error costs the outputs most.

After quantization the result is run beside the float model on held-out samples
(:mod:`.fidelity_metric`: cosine for every output, argmax agreement per sample or per
sequence position). When an output falls below the target (default: cosine and agreement
0.9, destruction; ``min_fidelity`` sets both), the quantized nodes are ranked by their measured
contribution: one layer-wise comparison (:func:`onnxprune.parity.layerwise.localise`) gives
each node the cosine its output loses beyond its inputs (LayerNorm's reciprocal, a softmax's
Exp, an Add of a tiny signal to a large offset...). The top 1, 2, 4, ... of the ranking are
kept float (re-emitted with the same ranges) until the target holds, then the count is
bisected down: the fewest nodes float, as NNCF's accuracy control and Intel Neural
Compressor's fallback do, since every float node costs INT8 speed. If no prefix reaches
the target, everything but the big matrix products (Conv/MatMul/Gemm) stays float as a last
resort. The most faithful model tried is kept (keeping nodes float never makes the result
worse than the first); the report says which nodes stayed float and why. ``strict`` fails
instead (exit 1, culprits named).

When the ranges were clipped by the calibration method (entropy, percentile, mse), a node's
error is often its range, not its arithmetic: an entropy threshold that cuts the tail of the
features a classifier pools (PP-OCR's text-direction classifier: top-1 agreement 41 % with
entropy, 92 % with minmax: an input-side threshold at 1/9 of the observed range).
The tensors the method cut (``clipped``) then first get back their observed min/max, every
node staying INT8 (no speed lost); only if that cannot reach the target are nodes kept float,
on those ranges if they helped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune import profiling, shapes
from onnxprune.api.fidelity_metric import HELD_OUT, Fidelity, Target, held_out, measure, run
from onnxprune.calibration.plan import ACTIVATION_BUDGET
from onnxprune.calibration.probes import tensor_infos
from onnxprune.calibration.tensors import graph_values
from onnxprune.errors import ParityError
from onnxprune.parity.inputs import make_feed
from onnxprune.parity.layerwise import localise
from onnxprune.parity.tolerances import Tolerances

__all__ = ["HELD_OUT", "Fidelity", "GuardResult", "Target", "culprits", "guard", "held_out", "measure", "ranking",
           "run"]

LOCALISE = 4  # samples of the layer-wise run that ranks the nodes
SECONDS = 180  # the search stops trying after this long (a re-emission and a comparison per try)
GROUP_BYTES = 256 << 20  # activations a sample of each model returns in one layer-wise run (layout: 840 MB)
LOCAL_DROP = 0.05  # cosine lost by one node beyond its inputs' that makes it a culprit
MATRIX_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
GIVE_BACK = 3  # kept nodes tried back in INT8 for speed, the most time saved first

# node names kept float (and, with ``clipped``, tensor names that get their observed min/max)
# -> quantized model (None: nothing left in INT8)
Requantize = Callable[..., ir.Model | None]


@dataclasses.dataclass
class GuardResult:
    model: ir.Model
    before: Fidelity
    after: Fidelity
    kept_float: dict[str, str]  # node -> why
    tries: int = 0  # re-emissions measured
    widened: dict[str, str] = dataclasses.field(default_factory=dict)  # tensor -> why its range is min/max

    def to_dict(self) -> dict[str, object]:
        target = self.after.target
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "kept_float": self.kept_float,
                "widened": self.widened, "target": {"cosine": target.cosine, "agreement": target.agreement},
                "tries": self.tries}


@dataclasses.dataclass
class _Try:
    model: ir.Model
    fidelity: Fidelity
    kept: dict[str, str]
    widened: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> tuple[bool, int, float]:
        """Meets the target, then (if it does) fewest nodes float, then the best margin."""
        ok = self.fidelity.problem() is None
        return ok, (-len(self.kept) if ok else 0), self.fidelity.score()


def guard(reference: ir.Model, quantized: ir.Model, feeds: Mapping[str, np.ndarray], requantize: Requantize,
          *, strict: bool = False, progress: bool = False, target: Target | None = None,
          int8: set[str] | None = None, clipped: Sequence[tuple[str, str]] = (),
          savings: Callable[[], Mapping[str, float]] | None = None,
          reference_outputs: Mapping[str, np.ndarray] | None = None) -> GuardResult:
    """``reference``: the float model as the quantizer saw it (names match); ``feeds``:
    held-out samples; ``int8``: the nodes ``quantized`` runs in INT8 (default: those reading
    a DequantizeLinear); ``clipped``: (tensor, why) whose range the calibration method cut,
    most first, which ``requantize(kept, widened)`` can give back (see the module docstring);
    ``savings``: measures the time INT8 saves per node on the target provider (see
    :mod:`.kernel_profile`; called only when nodes are kept float); ``reference_outputs``: the
    reference's outputs on ``feeds`` if the caller has them (else run once here: every try is
    compared with them). Returns the model to keep (``quantized`` when it is fine).

    The prefix search counts nodes, not time: a node that adds little error but saves much
    (a large MatMul) can end up in it. So with ``savings``, the few kept nodes that save most
    are then tried back in INT8, one at a time, each kept there when the target still holds."""
    outputs = reference_outputs
    if outputs is None:
        with profiling.phase("float outputs"):
            outputs = run(reference, feeds)
    with profiling.phase("compare"):
        first = measure(reference, quantized, feeds, target, reference_outputs=outputs)
    problem = first.problem()
    if problem is None:
        return GuardResult(quantized, first, first, {})
    deadline = time.monotonic() + SECONDS
    int8 = quantized_nodes(quantized) if int8 is None else int8
    ranked: list[tuple[str, str]] = []
    best = _Try(quantized, first, {})
    tries = 0

    def attempt(kept: dict[str, str], widened: dict[str, str] | None = None) -> bool:
        """Whether keeping ``kept`` float meets the target (False when nothing stays INT8)."""
        nonlocal best, tries
        model = requantize(frozenset(kept), frozenset(widened)) if widened else requantize(frozenset(kept))
        if model is None:
            return False
        tries += 1
        with profiling.phase("compare"):
            found = _Try(model, measure(reference, model, feeds, target, reference_outputs=outputs), kept,
                         widened or {})
        best = max(best, found, key=lambda t: t.key)
        return found.fidelity.problem() is None

    def prefix(k: int) -> dict[str, str]:
        return {n: f"{why}; rank {i + 1} of {len(ranked)} by the error it adds ({problem})"
                for i, (n, why) in enumerate(ranked[:k])}

    def fewest(holds: Callable[[int], bool], count: int) -> int | None:
        """The fewest of a ranking for which ``holds``: 1, 2, 4, ... until it does, then bisected."""
        low, high, k = 0, None, 1
        while k <= count and time.monotonic() < deadline:
            if holds(k):
                high = k
                break
            low, k = k, (count if k < count < 2 * k else 2 * k)
        while high is not None and high - low > max(1, high // 8) and time.monotonic() < deadline:
            middle = (low + high) // 2  # the fewest nodes that still hold the target
            if holds(middle):
                high = middle
            else:
                low = middle
        return high

    widened: dict[str, str] = {}
    if clipped:  # ranges first, every node stays INT8 (the fewest that reach the target were
        # tried: on PP-OCRv4's recognizer they held per-position agreement at 0.91 and kept 18 % of
        # its decoded lines; all of them back kept 66 %, minmax's own)
        if attempt({}, dict(clipped)):
            return _done(best, first, tries, strict, problem)
        widened = best.widened  # if that helped, the float search builds on it
    with profiling.phase("layer-wise ranking"):
        ranked[:] = ranking(reference, best.model, {k: v[:LOCALISE] for k, v in feeds.items()}, progress, int8)
    high = fewest(lambda k: attempt(prefix(k), widened), len(ranked))
    if high is None and time.monotonic() < deadline:  # last resort: only the matrix products in INT8
        attempt({n.name: f"not a matrix product ({problem})" for n in quantized.graph
                 if n.name in int8 and n.op_type not in MATRIX_OPS}, widened)
    if savings and not strict and best.kept and best.fidelity.problem() is None:  # speed: the dearest back
        saved = savings()
        dear = sorted((n for n in best.kept if saved.get(n, 0.0) > 0), key=lambda n: -saved[n])[:GIVE_BACK]
        for name in dear:
            if time.monotonic() < deadline and name in best.kept:
                attempt({k: why for k, why in best.kept.items() if k != name}, best.widened)
    return _done(best, first, tries, strict, problem)


def _done(best: _Try, first: Fidelity, tries: int, strict: bool, problem: str) -> GuardResult:
    if strict and (best.kept or best.fidelity.problem() is not None):  # widened ranges alone: still all INT8
        named = ", ".join(list(best.kept)[:5]) + (f" (+{len(best.kept) - 5} more)" if len(best.kept) > 5 else "")
        raise ParityError(f"quantization costs the outputs too much ({problem}); culprits: {named or 'none found'}")
    return GuardResult(best.model, first, best.fidelity, best.kept, tries, best.widened)


def ranking(reference: ir.Model, candidate: ir.Model, feeds: Mapping[str, np.ndarray],
            progress: bool = False, int8: set[str] | None = None) -> list[tuple[str, str]]:
    """The candidate's quantized nodes, the one whose output loses most cosine beyond its
    inputs first: (name, what was measured). Nodes that add no error are left out."""
    quantized = quantized_nodes(candidate) if int8 is None else int8
    local = _local_drops(reference, candidate, feeds, progress)
    drops: dict[str, tuple[float, str]] = {}
    for node in reference.graph:  # a Relu folded into its producer's range: the producer's error
        drop = local.get(node.name or "")
        if drop is None or drop[0] <= 0:
            continue
        producers = [v.producer() for v in node.inputs if v is not None]
        owner = node.name if node.name in quantized else next(
            (p.name for p in producers if p is not None and p.name in quantized), None)
        if owner is not None and drop[0] > drops.get(owner, (0.0, ""))[0]:
            drops[owner] = drop
    return [(name, why) for name, (_, why) in sorted(drops.items(), key=lambda d: -d[1][0])]


def quantized_nodes(model: ir.Model) -> set[str]:
    """Names of the nodes of a QDQ model that read a DequantizeLinear output (run in INT8)."""
    def reads_dequantized(node: ir.Node) -> bool:
        producers = [v.producer() for v in node.inputs if v is not None]
        return any(p is not None and p.op_type == "DequantizeLinear" for p in producers)

    return {n.name for n in model.graph if n.name and n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and reads_dequantized(n)}


def _tensor_groups(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[set[str] | None]:
    """Consecutive groups of the model's tensors of at most ``GROUP_BYTES`` a sample (sizes
    inferred for the first sample; unknown ones count as the largest); [None]: all at once."""
    names = [n for n, v in graph_values(model).items() if not v.is_initializer() and v.const_value is None]
    infos = tensor_infos(model, names, {k: v[:1] for k, v in feeds.items()})
    known = [i.per_sample * (i.dtype.itemsize if i.dtype else 4) for i in infos.values() if i.per_sample]
    sizes = {n: i.per_sample * (i.dtype.itemsize if i.dtype else 4) if i.per_sample else max(known, default=0)
             for n, i in infos.items()}
    if sum(sizes.values()) <= GROUP_BYTES:
        return [None]
    groups: list[set[str]] = [set()]
    used = 0.0
    for name in names:
        if groups[-1] and used + sizes[name] > GROUP_BYTES:
            groups.append(set())
            used = 0
        groups[-1].add(name)
        used += sizes[name]
    return list(groups)


def culprits(reference: ir.Model, candidate: ir.Model, feeds: Mapping[str, np.ndarray],
             progress: bool = False) -> dict[str, str]:
    """Nodes whose output is much further from the float model than their inputs are."""
    drops = _local_drops(reference, candidate, feeds, progress)
    return {name: why for name, (drop, why) in drops.items() if drop > LOCAL_DROP}


def _local_drops(reference: ir.Model, candidate: ir.Model, feeds: Mapping[str, np.ndarray],
                 progress: bool) -> dict[str, tuple[float, str]]:
    """Per reference node: the cosine its outputs lose beyond its inputs, and a line saying so.

    A run returns every compared tensor of both models at once: past ``GROUP_BYTES`` a sample,
    the tensors are compared in groups, each over fewer samples (``LOCALISE`` in all; one
    sample of a detector's maps holds millions of values)."""
    groups = _tensor_groups(reference, feeds)
    fixed = any(d and isinstance(d[0], int) for d in shapes.declared(reference).values())
    samples = LOCALISE if fixed else max(1, LOCALISE // len(groups))  # a fixed batch cannot be cut
    feed = make_feed({k: v[:samples] for k, v in feeds.items()}, reference, batch_size=samples)
    cosine = {}
    for group in groups:
        report = localise(reference, candidate, feed, Tolerances(atol=None, min_cosine=0.99), progress=progress,
                          max_bytes=ACTIVATION_BUDGET, only=group)  # a sample at a time: magika 350 -> 260 MB
        cosine.update({r["name"]: r["cosine"] for r in report["tensors"] if r["cosine"] is not None})
    found = {}
    for node in reference.graph:
        mine = [cosine[v.name] for v in node.outputs if v.name in cosine]
        if not mine or not node.name:
            continue
        inputs = [cosine.get(v.name, 1.0) for v in node.inputs if v is not None and not v.is_initializer()
                  and v.const_value is None]
        worst_in = min(inputs, default=1.0)
        why = f"cosine {worst_in:.3f} -> {min(mine):.3f} through this {node.op_type}"
        found[node.name] = (worst_in - min(mine), why)
    return found
