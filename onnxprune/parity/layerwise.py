"""Layer-wise localisation: which intermediate tensor does the error first appear in?

When the candidate came from the reference through our passes, node and tensor names
survive. A float tensor of the reference is matched to the candidate tensor that the
same-named node reads at the same input (this follows rewrites that rename what a consumer
reads: after BatchNorm folding the Relu reads the folded Conv's output, which keeps the
Conv's *name* but holds BN's *values*), or else to the same-named tensor. Matched tensors
are exposed as extra graph outputs of a copy of both models, compared batch by batch and
judged with the same tolerances as the outputs (model-level criteria like top-1 only apply
to the outputs). A *first failure* is a failing tensor none of whose upstream tensors (in
the reference graph) fails: the layer that introduced the error.

* QDQ candidates: the float value a layer's consumers see is the DequantizeLinear output
  of ``DQ(Q(t))``; a name that feeds a QuantizeLinear (or names the int8 tensor itself) is
  followed to that DequantizeLinear output, so quantization error of ``t`` is included.
* Pruned candidates: a tensor whose shape changed is compared on its surviving channels
  when the mapping is known (``channel_map`` argument, or the candidate's metadata key
  ``onnxprune.kept_channels``: JSON ``{tensor: {"axis": int, "kept" or "removed":
  [indices]}}``, which the prune pass writes: :mod:`onnxprune.passes.prune.channel_map`), otherwise
  skipped (status ``shape-differs``); the error of removed channels then shows in the
  first downstream tensor of unchanged shape (the next layer's output).

Exposing tensors stops ONNX Runtime from fusing across them (e.g. QDQ into QLinearConv,
Conv+BN), so these numbers come from the unfused graph; the output table of the check
comes from the real, fused one. Every exposed tensor of a run is in memory at once, so
batches are cut into runs of at most ``LAYERWISE_BYTES`` of activations.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune import runtime
from onnxprune.calibration.tensors import FLOAT_TYPES
from onnxprune.graphutils import named
from onnxprune.parity.metrics import OutputStats
from onnxprune.parity.providers import Endpoint, run_session, with_cpu_fallback
from onnxprune.parity.tolerances import Tolerances
from onnxprune.passes.cleanup import MapSafeShapeInferencePass
from onnxprune.passes.prune.channel_map import CHANNEL_MAP_KEY

# All exposed tensors of a run are in memory at once: runs start at 2 samples, then take as
# many as fit in this budget (the feed's batches are cut, never merged).
LAYERWISE_FIRST_CHUNK = 2
LAYERWISE_BYTES = 256 * 2**20


@dataclasses.dataclass
class Match:
    name: str  # tensor name in the reference
    candidate: str  # the candidate tensor holding it (the name itself, or a DequantizeLinear output)
    node: str  # producer in the reference
    op_type: str
    candidate_node: str  # producer of the same-named tensor in the candidate


def _producers(graph: ir.Graph) -> dict[str, ir.Value]:
    return {v.name: v for node in graph for v in node.outputs if v.name}


def _dequantized(value: ir.Value) -> ir.Value:
    """The float tensor consumers see for ``value`` in a QDQ graph (``value`` if none)."""
    if value.dtype in FLOAT_TYPES:
        quantize = next((n for n in value.consumers() if n.op_type == "QuantizeLinear"), None)
        if quantize is None:
            return value
        value = quantize.outputs[0]
    dequantize = next((n for n in value.consumers() if n.op_type == "DequantizeLinear"), None)
    return dequantize.outputs[0] if dequantize is not None else value


def _unique_named(graph: ir.Graph) -> dict[str, ir.Node]:
    count: dict[str | None, int] = {}
    for node in graph:
        count[node.name] = count.get(node.name, 0) + 1
    return {node.name: node for node in graph if node.name and count[node.name] == 1}


def _is_activation(value: ir.Value) -> bool:
    producer = value.producer()
    return producer is not None and producer.op_type != "Constant"


def consumer_aliases(reference: ir.Model, candidate: ir.Model) -> dict[str, str | None]:
    """{reference tensor: candidate tensor} read at the same input of the same-named node.

    This survives rewrites that keep the consumer but rename what it reads: after BN
    folding the Relu that read ``bn_out`` reads the folded ``conv_out``; in a QDQ graph
    the Conv reads a DequantizeLinear output. ``None``: conflicting evidence.
    """
    cand_nodes = _unique_named(candidate.graph)
    aliases: dict[str, str | None] = {}
    for name, node in _unique_named(reference.graph).items():
        twin = cand_nodes.get(name)
        if twin is None or twin.op_type != node.op_type:
            continue
        for ref_in, cand_in in zip(node.inputs, twin.inputs):  # a fold may append a bias: zip
            if ref_in is None or cand_in is None or not _is_activation(ref_in) or cand_in.producer() is None:
                continue
            if ref_in.name is None:  # (loaded graphs name every value)
                continue
            if aliases.setdefault(ref_in.name, cand_in.name) != cand_in.name:
                aliases[ref_in.name] = None
    return aliases


def match_tensors(reference: ir.Model, candidate: ir.Model) -> tuple[list[Match], int]:
    """Float tensors of the reference that the candidate also has, in topological order.

    A tensor is matched through its consumers (:func:`consumer_aliases`) when they survive,
    else by name; a name the consumers show to hold another reference tensor is not used.
    """
    cand = _producers(candidate.graph)
    aliases = consumer_aliases(reference, candidate)
    claimed = {c for c in aliases.values() if c is not None}
    matches, unmatched = [], 0
    for node in reference.graph:
        if node.op_type == "Constant":
            continue
        for value in node.outputs:
            if not value.name or value.dtype not in FLOAT_TYPES:
                continue
            if value.name in aliases:
                alias = aliases[value.name]
                twin = cand.get(alias) if alias is not None else None
                resolved = twin
            else:
                twin = cand.get(value.name)
                twin = None if twin is not None and twin.name in claimed else twin
                resolved = _dequantized(twin) if twin is not None else None
            if twin is None or resolved is None or resolved.dtype not in FLOAT_TYPES:  # (resolved: from twin)
                unmatched += 1
                continue
            producer = twin.producer()
            matches.append(Match(value.name, named(resolved), node.name or "", node.op_type,
                                 producer.name or producer.op_type if producer else ""))
    return matches, unmatched


def _typed_copy(model: ir.Model) -> ir.Model:
    copy = model.clone()
    return MapSafeShapeInferencePass(check_type=False, strict_mode=False, data_prop=False)(copy).model


def _expose(model: ir.Model, names: Sequence[str]) -> None:
    present = {v.name for v in model.graph.outputs}
    values = _producers(model.graph)
    for name in names:
        if name not in present:
            model.graph.outputs.append(values[name])
            present.add(name)


@dataclasses.dataclass(frozen=True)
class Channels:
    """Which indices of a pruned tensor survive along ``axis``: ``kept``, or all but ``removed``."""

    axis: int
    kept: np.ndarray | None = None
    removed: np.ndarray | None = None

    def surviving(self, length: int) -> np.ndarray:
        if self.kept is not None:
            return self.kept
        assert self.removed is not None  # a Channels has kept or removed indices
        return np.setdiff1d(np.arange(length), self.removed)


def channel_map_of(candidate: ir.Model, given: Mapping | None) -> dict[str, Channels]:
    """The candidate's recorded map (metadata ``onnxprune.kept_channels``), updated by ``given``
    ({tensor: (axis, kept indices)})."""
    result = {}
    text = candidate.metadata_props.get(CHANNEL_MAP_KEY)
    for name, entry in (json.loads(text) if text else {}).items():
        result[name] = Channels(int(entry["axis"]),
                                *(np.asarray(entry[k], dtype=np.int64) if k in entry else None
                                  for k in ("kept", "removed")))
    for name, (axis, kept) in (given or {}).items():
        result[name] = Channels(int(axis), np.asarray(kept, dtype=np.int64))
    return result


class _Pair:
    """One matched tensor: how it is compared (decided on the first batch) and its statistics."""

    def __init__(self, match: Match, tolerances: Tolerances, channels) -> None:
        self.match = match
        self.channels: Channels | None = channels
        self._kept: np.ndarray | None = None
        self.status: str | None = None
        self.shapes: tuple[list[int], list[int]] | None = None
        self.stats = OutputStats(tolerances.atol_for(match.name), tolerances.rtol_for(match.name),
                                 detailed=False)

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        if self.status is None:
            self.shapes = (list(ref.shape), list(cand.shape))
            self.status = "compared" if ref.shape == cand.shape else "shape-differs"
            if self.status == "shape-differs" and self.channels is not None and self.channels.axis < ref.ndim:
                axis = self.channels.axis
                self._kept = self.channels.surviving(ref.shape[axis])
                if self._kept.size and self._kept.max() < ref.shape[axis] \
                        and np.take(ref, self._kept, axis).shape == cand.shape:
                    self.status = "surviving-channels"
        if self.status == "surviving-channels":
            assert self._kept is not None and self.channels is not None  # set with that status
            ref = np.take(ref, self._kept, self.channels.axis)
        if ref.shape == cand.shape and self.status != "shape-differs":
            self.stats.update(ref, cand)

    def row(self, tolerances: Tolerances) -> dict:
        m = self.match
        row: dict[str, Any] = {"name": m.name, "node": m.node, "op_type": m.op_type, "candidate_node": m.candidate_node,
               "candidate_tensor": m.candidate, "status": self.status or "not-run",
               "reference_shape": self.shapes[0] if self.shapes else None,
               "candidate_shape": self.shapes[1] if self.shapes else None}
        compared = self.status in ("compared", "surviving-channels")
        stats = self.stats.summary()
        row["failures"] = tolerances.judge(m.name, stats, model_level=False) if compared else []
        row["passed"] = not row["failures"]
        row.update({k: stats[k] if compared else None for k in (
            "max_abs", "mean_abs", "max_rel", "cosine", "sqnr_db", "mismatches", "mismatch_fraction")})
        return row


def first_failures(reference: ir.Model, failed: Mapping[str, bool]) -> list[str]:
    """Failing tensors with no failing tensor upstream (through unmatched ones too)."""
    bad: dict[str | None, bool] = {}  # tensor -> it or something upstream failed
    first = []
    for node in reference.graph:
        upstream = any(bad.get(v.name, False) for v in node.inputs if v is not None)
        for value in node.outputs:
            failing = value.name is not None and failed.get(value.name, False)
            if value.name is not None and failing and not upstream:
                first.append(value.name)
            bad[value.name] = upstream or failing
    return first


def localise(
    reference: ir.Model,
    candidate: ir.Model,
    feed,
    tolerances: Tolerances,
    reference_provider: str = "CPUExecutionProvider",
    candidate_provider: str = "CPUExecutionProvider",
    *,
    channel_map: Mapping | None = None,
    samples: int | None = None,
    progress: bool = False,
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
    max_bytes: int = LAYERWISE_BYTES,
    only: Collection[str] | None = None,
) -> dict:
    """Compare every matched intermediate tensor over the first ``samples`` samples of
    ``feed`` (all if None); the report documented in onnxprune.parity.result (``layerwise``).
    ``max_bytes``: exposed activations per run (below the default, runs start at 1 sample);
    ``only``: the reference tensors to compare (default: every one)."""
    ref_copy, cand_copy = _typed_copy(reference), _typed_copy(candidate)
    matches, unmatched = match_tensors(ref_copy, cand_copy)
    if only is not None:
        matches = [m for m in matches if m.name in only]
    channels = channel_map_of(candidate, channel_map)
    pairs = [_Pair(m, tolerances, channels.get(m.name)) for m in matches]
    _expose(ref_copy, [m.name for m in matches])
    _expose(cand_copy, [m.candidate for m in matches])
    ref_end, cand_end = Endpoint("reference", reference_provider), Endpoint("candidate", candidate_provider)
    options = provider_options
    with runtime.session(ref_copy, with_cpu_fallback(reference_provider), provider_options=options) as ref_sess, \
            runtime.session(cand_copy, with_cpu_fallback(candidate_provider), provider_options=options) as cand_sess:
        ref_names = [m.name for m in matches]
        cand_names = [m.candidate for m in matches]
        fixed = any(shape and isinstance(shape[0], int) and shape[0] > 0
                    for shape, _ in runtime.input_specs(reference).values())
        chunk = LAYERWISE_FIRST_CHUNK if max_bytes >= LAYERWISE_BYTES else 1
        limit = feed.samples if samples is None else min(samples, feed.samples)
        seen = 0
        bar = tqdm(total=limit, desc="layer-wise", unit="sample", disable=not progress, leave=False)
        for feeds, _ in feed:
            if seen >= limit:
                break
            n = len(next(iter(feeds.values())))
            n = n if fixed else min(n, limit - seen)
            start = 0
            while start < n:
                step = n if fixed else chunk  # a fixed batch cannot be cut
                part = {k: v[start : start + step] for k, v in feeds.items()}
                ref_out = run_session(ref_sess, part, ref_end, ref_names)
                cand_out = run_session(cand_sess, part, cand_end, list(dict.fromkeys(cand_names)))
                for pair in pairs:
                    pair.update(ref_out[pair.match.name], cand_out[pair.match.candidate])
                taken = min(step, n - start)
                per_sample = sum(a.nbytes for out in (ref_out, cand_out) for a in out.values()) / taken
                chunk = max(1, int(max_bytes // max(per_sample, 1)))
                del ref_out, cand_out
                start += taken
                seen += taken
                bar.update(taken)
        bar.close()
    rows = [p.row(tolerances) for p in pairs]
    failed = {r["name"]: not r["passed"] for r in rows}
    return {
        "reference_provider": reference_provider,
        "candidate_provider": candidate_provider,
        "samples": seen,
        "tensors": rows,
        "first_failures": first_failures(reference, failed),
        "matched": len(matches),
        "unmatched": unmatched,
    }
