"""Running passes in order, recording what each did, and verifying parity after each.

The default pass order lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from tqdm import tqdm

from onnxprune import probe, profiling, runtime
from onnxprune.errors import InvalidModelError, OnnxPruneError, ParityError, first_line
from onnxprune.graphutils import node_count, param_count
from onnxprune.io import weights_nbytes
from onnxprune.parity.metrics import OutputStats
from onnxprune.parity.tolerances import Tolerances
from onnxprune.passes import get_pass
from onnxprune.passes.base import Pass
from onnxprune.validate import check_model

# The exact clean-up pipeline (`onnxprune optimize`). Order matters:
# - eliminate-identity first: an Identity/Dropout between a Conv and its BN hides the pair;
# - shape-inference before fold-constants: exporters leave intermediate shapes out, and
#   without them Shape -> Gather -> Reshape chains do not fold (the run would not be idempotent);
# - fold-constants next: BN parameters or scales computed in-graph become initializers;
#   lift-constants then turns the remaining Constant nodes (Clip bounds...) into initializers;
# - fold-batchnorm, then fold-affine: folding BN leaves Conv -> Mul/Add chains adjacent;
# - batchnorm-to-affine after both: only the BNs no producer could absorb remain for it;
#   fold-affine once more then absorbs the Mul + Add it made of a BN that a constant Mul
#   had kept from its Conv (Conv -> Mul -> BN: the first fold-affine took the Mul);
# - remove-unused after the folds, which orphan the old BN parameters and weights;
# - shape-inference last, to annotate the values the rewrites created.
DEFAULT_PIPELINE: tuple[str, ...] = (
    "eliminate-identity",
    "shape-inference",
    "fold-constants",
    "lift-constants",
    "fold-batchnorm",
    "fold-affine",
    "batchnorm-to-affine",
    "fold-affine",
    "remove-unused",
    "shape-inference",
)


_CLEANUP = frozenset(DEFAULT_PIPELINE)  # one row in a profile


class PassCrashedError(RuntimeError):
    """An unexpected exception inside a pass (a bug, not a user error), naming the pass."""


@dataclasses.dataclass
class PassRecord:
    name: str
    modified: bool
    nodes_before: int
    nodes_after: int
    params_before: int
    params_after: int
    seconds: float
    changes: list[str]
    parity: dict | None = None  # verification statistics when verify is on


@dataclasses.dataclass
class PipelineResult:
    model: ir.Model
    records: list[PassRecord]

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    def to_dict(self) -> dict:
        return {"passes": [dataclasses.asdict(r) for r in self.records]}


class Verifier:
    """Checks, after a pass, that the model is valid, loads in ONNX Runtime and keeps parity.

    Reference outputs are computed once, from the model as it was before the first pass.
    ``tolerance`` bounds max|candidate - reference| / max|reference| per output: the
    parity checker's statistics (onnxprune.parity) with a per-output ``atol`` of
    ``tolerance * max|reference|`` on every element.

    Exact rewrites (folding BN or a scale into a Conv) reorder float32 arithmetic, and some
    models amplify that rounding far beyond 1e-5: PP-OCRv4's detector run by ONNX Runtime
    with and without its own graph optimizations (which fuse Conv+BN the same way, in
    float32) differs by more than 1e-5 on real pages and by far more on random inputs,
    whose sigmoid outputs sit deep in the tail (figures: bench/results/realmodels.json). So
    each output's bound is ``max(tolerance, FLOOR_FACTOR * floor)``, ``floor`` being that
    spread of the original itself on the same feeds (``noise_floor`` in the record): a
    pass is exact when it moves the outputs no more than float32 evaluation of the
    model already does.
    """

    FLOOR_FACTOR = 2.0  # the spread is one sample of the rounding noise; another rewrite draws another

    def __init__(
        self,
        feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        tolerance: float = 1e-5,
    ) -> None:
        self.feeds = list(feeds) if feeds is not None else None
        self.tolerance = tolerance
        self._reference: list[dict[str, np.ndarray]] = []
        self._scale: dict[str, float] = {}
        self.tolerances: Tolerances | None = None
        self.note: str | None = None  # how the random inputs' open dims were decided, if probed
        self.noise_floor: dict[str, float] = {}  # per output: the original's own float32 spread (see above)

    def prepare(self, model: ir.Model) -> None:
        if self.feeds is None:
            probed, self.note = probe.feeds(model, seeds=range(2))
            self.feeds = list(probed)
        feeds = self.feeds
        with runtime.session(model) as sess:
            names = [o.name for o in sess.get_outputs()]
            self._reference = [dict(zip(names, runtime.run_session(sess, names, f))) for f in feeds]
        self._scale = {name: max([1e-12] + [_finite_max_abs(r[name]) for r in self._reference]) for name in names}
        self.noise_floor = self._spread(model, names)
        self.tolerances = Tolerances(
            atol=0.0, rtol=0.0, preset="verify",
            per_output_atol={name: self.bound(name) * scale for name, scale in self._scale.items()},
        )

    def bound(self, name: str) -> float:
        """The normalized error output ``name`` may show: the tolerance or the model's own float32 noise."""
        return max(self.tolerance, self.FLOOR_FACTOR * self.noise_floor.get(name, 0.0))

    def _spread(self, model: ir.Model, names: list[str]) -> dict[str, float]:
        """Per output, max|unoptimized - reference| / max|reference| of the original: how far
        ONNX Runtime's own exact rewrites move it (0 where they change nothing or it fails)."""
        spread = dict.fromkeys(names, 0.0)
        assert self.feeds is not None
        if weights_nbytes(model) > runtime.SESSION_BYTES_LIMIT:
            return spread  # a second session would cost what large models have no room for (peak <= 1.5x)
        try:
            with runtime.session(model, optimization_level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) as sess:
                for feeds, reference in zip(self.feeds, self._reference):
                    for name, out in zip(names, runtime.run_session(sess, names, feeds)):
                        ref = reference[name]
                        if out.shape != ref.shape or out.dtype.kind != "f":
                            continue
                        diff = np.abs(out.astype(np.float64) - ref)
                        spread[name] = max(spread[name], float(np.max(diff, where=np.isfinite(diff), initial=0.0))
                                           / self._scale[name])
        except OnnxPruneError:
            pass  # no floor: the plain tolerance applies
        return spread

    def __call__(self, model: ir.Model, pass_name: str) -> dict:
        try:
            check_model(model)
        except InvalidModelError as exc:
            raise InvalidModelError(f"after pass '{pass_name}': {exc}") from None
        tolerances, feeds_list = self.tolerances, self.feeds
        assert tolerances is not None and feeds_list is not None, "prepare() sets them"
        stats = {name: OutputStats(tolerances.atol_for(name), 0.0, detailed=False) for name in self._scale}
        with runtime.session(model) as sess:
            missing = set(self._scale) - {o.name for o in sess.get_outputs()}
            if missing:
                raise ParityError(f"pass '{pass_name}' removed or renamed output(s) {sorted(missing)}")
            for feeds, reference in zip(feeds_list, self._reference):
                outputs = dict(zip(reference, runtime.run_session(sess, list(reference), feeds)))
                for name, ref in reference.items():
                    if outputs[name].shape != ref.shape:
                        raise ParityError(
                            f"pass '{pass_name}' changed the shape of output '{name}' from "
                            f"{list(ref.shape)} to {list(outputs[name].shape)}"
                        )
                    stats[name].update(ref, outputs[name])
        summaries = {name: s.summary() for name, s in stats.items()}
        worst = {
            name: math.inf if s["nonfinite_mismatches"] else s["max_abs"] / self._scale[name]
            for name, s in summaries.items()
        }
        for name, summary in summaries.items():
            if tolerances.judge(name, summary):
                floor = self.noise_floor.get(name, 0.0)
                allowed = f"tolerance {self.tolerance:g}" + (
                    f", or {self.FLOOR_FACTOR:g}x the original's own float32 spread {floor:.3g}" if floor else "")
                raise ParityError(
                    f"pass '{pass_name}' broke parity: output '{name}' differs by {worst[name]:.3g} "
                    f"(max abs error / max |reference|; {allowed})"
                )
        return {
            "max_normalized_error": worst,
            "noise_floor": dict(self.noise_floor),
            "sqnr_db": {n: s["sqnr_db"] if math.isfinite(s["sqnr_db"]) else None for n, s in summaries.items()},
        }


class ShapeVerifier:
    """Checks, after a pass that changes the outputs' values (pruning), that the model is valid,
    runs in ONNX Runtime and keeps its outputs' shapes. Failing is a bug in the pass, said so."""

    def __init__(self) -> None:
        self._feeds: dict[str, np.ndarray] = {}
        self._shapes: dict[str, tuple] = {}

    def prepare(self, model: ir.Model, feeds: dict[str, np.ndarray] | None = None) -> None:
        """``feeds``: a batch of real data (its shapes are the real ones), else random inputs."""
        self._feeds = ({k: v[:2] if v.ndim else v for k, v in feeds.items()} if feeds
                       else runtime.random_inputs(model, batch=2))
        self._shapes = {k: v.shape for k, v in runtime.run(model, self._feeds).items()}

    def __call__(self, model: ir.Model, pass_name: str) -> None:
        try:
            check_model(model)
            outputs = runtime.run(model, self._feeds)
        except OnnxPruneError as exc:
            raise RuntimeError(f"pass '{pass_name}' produced an invalid model ({exc}); "
                               "this is a bug in onnxprune") from None
        changed = {k: (self._shapes[k], v.shape) for k, v in outputs.items() if self._shapes.get(k) != v.shape}
        if changed:
            raise RuntimeError(f"pass '{pass_name}' changed output shapes {changed}; this is a bug in onnxprune")


def _finite_max_abs(array: np.ndarray) -> float:
    values = np.abs(np.asarray(array, dtype=np.float64))
    return float(np.max(values[np.isfinite(values)], initial=0.0))


def run_pipeline(
    model: ir.Model,
    passes: Sequence[str | Pass] = DEFAULT_PIPELINE,
    *,
    verify: Verifier | ShapeVerifier | None = None,
    progress: bool = False,
    on_record: Callable[[PassRecord], None] | None = None,
) -> PipelineResult:
    """Run ``passes`` on ``model`` in place, in order; return the model and one record per pass.

    With ``verify``, a failing check stops the pipeline with an error naming the pass.
    """
    instances = [get_pass(p) if isinstance(p, str) else p for p in passes]
    if verify is not None:
        verify.prepare(model)
    records = []
    bar = tqdm(instances, desc="passes", unit="pass", disable=not progress, leave=False)
    for p in bar:
        name = getattr(p, "name", "") or type(p).__name__
        bar.set_postfix_str(name)
        nodes, params = node_count(model), param_count(model)
        start = time.perf_counter()
        try:
            with profiling.phase("clean-up" if name in _CLEANUP else name):
                result = p(model)
        except OnnxPruneError:
            raise
        except ir.passes.InvariantError as exc:
            raise InvalidModelError(f"pass '{name}': {exc}") from None
        except Exception as exc:  # a bug in the pass: name it (the CLI exits 3, nothing written)
            raise PassCrashedError(f"pass '{name}' crashed ({first_line(exc, with_type=True)}); "
                                   "this is a bug in onnxprune") from exc
        model = result.model
        record = PassRecord(
            name=name,
            modified=result.modified,
            nodes_before=nodes,
            nodes_after=node_count(model),
            params_before=params,
            params_after=param_count(model),
            seconds=time.perf_counter() - start,
            changes=list(getattr(result, "changes", [])),
        )
        if verify is not None:
            record.parity = verify(model, name)
        records.append(record)
        if on_record is not None:
            on_record(record)
    return PipelineResult(model, records)
