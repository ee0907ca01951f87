"""One comparison (reference vs candidate on a pair of execution providers) and one pass
of batches through every session; what a single process runs over all the samples and a
worker over its range of them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune.errors import UsageError
from onnxprune.graphutils import named
from onnxprune.parity.metrics import OutputStats
from onnxprune.parity.providers import (
    Endpoint,
    fail_if_unavailable,
    open_sessions,
    plan_comparisons,
    run_session,
)
from onnxprune.parity.tolerances import Tolerances


@dataclasses.dataclass
class Comparison:
    reference: Endpoint
    candidate: Endpoint
    judged: bool
    stats: dict[str, OutputStats]

    @property
    def name(self) -> str:
        return f"{self.reference} vs {self.candidate}"

    def update(self, outputs: Mapping[Endpoint, dict], labels: np.ndarray | None) -> None:
        ref, cand = outputs[self.reference], outputs[self.candidate]
        for name, stats in self.stats.items():
            if ref[name].shape != cand[name].shape:
                raise UsageError(
                    f"output '{name}' has shape {list(ref[name].shape)} in the reference but "
                    f"{list(cand[name].shape)} in the candidate ({self.name})"
                )
            stats.update(ref[name], cand[name], labels)

    def summary(self, tolerances: Tolerances) -> dict:
        outputs = {}
        for name, stats in self.stats.items():
            data = stats.summary()
            data["failures"] = tolerances.judge(name, data) if self.judged else []
            data["passed"] = not data["failures"]
            outputs[name] = data
        return {
            "name": self.name,
            "reference": dataclasses.asdict(self.reference),
            "candidate": dataclasses.asdict(self.candidate),
            "judged": self.judged,
            "passed": all(o["passed"] for o in outputs.values()),
            "outputs": outputs,
        }


def compare_batches(reference: ir.Model, candidate: ir.Model, batches, providers: Sequence[str],
                    tolerances: Tolerances, require_providers: bool, options: Mapping, *, seed: int):
    """``batches`` through every session: the comparisons, the providers that could not be
    initialised, and where each session's nodes ran."""
    with contextlib.ExitStack() as stack:
        sessions, failed, placement = open_sessions(stack, {"reference": reference, "candidate": candidate},
                                                    list(providers), options)
        fail_if_unavailable(failed, require_providers)
        working = [p for p in providers if Endpoint("reference", p) in sessions]
        if not working:
            raise UsageError("no requested execution provider could be initialised: "
                             + "; ".join(f"{u['provider']}: {u['reason']}" for u in failed))
        names = [named(o) for o in reference.graph.outputs]
        comparisons = [
            Comparison(r, c, judged, {n: OutputStats(tolerances.atol_for(n), tolerances.rtol_for(n),
                                                      top_k=tolerances.top_k, seed=seed) for n in names})
            for r, c, judged in plan_comparisons(working)
        ]
        for feeds, labels in batches:
            outputs = {e: run_session(s, feeds, e, names) for e, s in sessions.items()}
            for comparison in comparisons:
                comparison.update(outputs, labels)
    return comparisons, failed, placement
