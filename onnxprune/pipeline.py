"""Running passes in order, recording what each did, and verifying parity after each.

The default pass order lives here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
from tqdm import tqdm

from onnxprune import runtime
from onnxprune.errors import InvalidModelError, OnnxPruneError, ParityError
from onnxprune.graphutils import node_count, param_count
from onnxprune.passes import get_pass
from onnxprune.passes.base import Pass
from onnxprune.validate import check_model

# The exact clean-up pipeline (`onnxprune optimize`). Order matters:
# - eliminate-identity first: an Identity/Dropout between a Conv and its BN hides the pair;
# - fold-constants next: BN parameters or scales computed in-graph become initializers;
# - fold-batchnorm, then fold-affine: folding BN leaves Conv -> Mul/Add chains adjacent;
# - batchnorm-to-affine after both: only the BNs no producer could absorb remain for it;
# - remove-unused after the folds, which orphan the old BN parameters and weights;
# - shape-inference last, to annotate the final graph (one run, not one per pass).
DEFAULT_PIPELINE: tuple[str, ...] = (
    "eliminate-identity",
    "fold-constants",
    "fold-batchnorm",
    "fold-affine",
    "batchnorm-to-affine",
    "remove-unused",
    "shape-inference",
)


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
    ``tolerance`` bounds max|candidate - reference| / max|reference| per output.
    """

    def __init__(
        self,
        feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        tolerance: float = 1e-5,
    ) -> None:
        self.feeds = list(feeds) if feeds is not None else None
        self.tolerance = tolerance
        self._reference: list[dict[str, np.ndarray]] = []

    def prepare(self, model: ir.Model) -> None:
        if self.feeds is None:
            self.feeds = [runtime.random_inputs(model, seed=s) for s in range(2)]
        with runtime.session(model) as sess:
            names = [o.name for o in sess.get_outputs()]
            self._reference = [dict(zip(names, sess.run(names, dict(f)))) for f in self.feeds]

    def __call__(self, model: ir.Model, pass_name: str) -> dict:
        try:
            check_model(model)
        except InvalidModelError as exc:
            raise InvalidModelError(f"after pass '{pass_name}': {exc}") from None
        worst: dict[str, float] = {}
        with runtime.session(model) as sess:
            for feeds, reference in zip(self.feeds, self._reference):
                outputs = dict(zip(reference, sess.run(list(reference), dict(feeds))))
                for name, ref in reference.items():
                    err = _normalized_error(ref, outputs[name])
                    worst[name] = max(worst.get(name, 0.0), err)
        for name, err in worst.items():
            if not err <= self.tolerance:
                raise ParityError(
                    f"pass '{pass_name}' broke parity: output '{name}' differs by {err:.3g} "
                    f"(max abs error / max |reference|; tolerance {self.tolerance:g})"
                )
        return {"max_normalized_error": worst}


def _normalized_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    if reference.shape != candidate.shape:
        return float("inf")
    if reference.size == 0:
        return 0.0
    ref = reference.astype(np.float64)
    scale = max(float(np.max(np.abs(ref))), 1e-12)
    return float(np.max(np.abs(ref - candidate.astype(np.float64)))) / scale


def run_pipeline(
    model: ir.Model,
    passes: Sequence[str | Pass] = DEFAULT_PIPELINE,
    *,
    verify: Verifier | None = None,
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
            result = p(model)
        except OnnxPruneError:
            raise
        except ir.passes.InvariantError as exc:
            raise InvalidModelError(f"pass '{name}': {exc}") from None
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
