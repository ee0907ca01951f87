"""The whole job in one call: clean up, prune, quantize, then check against the original.

The product's stage order is written here, once (:data:`STAGES`); each stage is the public
API of its own package, so ``compress`` is exactly what a user gets by chaining
``optimize`` → ``prune`` → ``quantize`` → ``check`` by hand, on one in-memory model.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx_ir as ir

from onnxprune import profiling, runtime, stats
from onnxprune import providers as eps
from onnxprune.api import compress_fidelity, optimize, prune, quantize
from onnxprune.api.fidelity_metric import Fidelity, Target
from onnxprune.api.search_api import Judge, Probe, check_budget, search_keep
from onnxprune.calibration import open_dataset
from onnxprune.distributed import resolve_executor
from onnxprune.errors import ParityError, UsageError
from onnxprune.io import ModelLike, as_model, check_output_path, save_model
from onnxprune.parity import CheckResult, Tolerances, check
from onnxprune.parity.compare import prepare_check_data
from onnxprune.parity.labels import may_classify
from onnxprune.passes.prune import PruneOptions
from onnxprune.pipeline import DEFAULT_PIPELINE
from onnxprune.report import short_repr

STAGES: tuple[str, ...] = ("optimize", "prune", "quantize", "check")
BN_FOLDING = ("fold-batchnorm", "batchnorm-to-affine")


@dataclasses.dataclass
class StageRecord:
    __repr__ = short_repr  # a line, not the whole graph

    name: str
    seconds: float
    summary: dict  # nodes, parameters, weights_bytes, macs after the stage
    result: object  # the stage's own result (OptimizeResult, PruneResult, ...)
    metric: dict | None = None  # fidelity (and accuracy on labels) on --eval after the stage


@dataclasses.dataclass
class CompressResult:
    """Truthy when the final parity check holds and, with ``strict``, the final fidelity meets its target
    (without, a miss the guards could not mend is a warning, as ``quantize`` alone reports it)."""

    __repr__ = short_repr  # a line, not the whole graph

    model: ir.Model
    before: dict
    stages: list[StageRecord]
    check: CheckResult
    latency_ms: dict | None = None  # ONNX Runtime CPU median {"before", "after", "batch", "threads"}
    output: Path | None = None
    search: dict | None = None  # the accuracy-driven search: budget, baseline, every probe, chosen
    fidelity: Fidelity | None = None  # the guards' measure of the final model on --eval (None: exact or searched)
    retries: list[dict] = dataclasses.field(default_factory=list)  # quantize rerun with a stricter guard
    strict: bool = False

    def __bool__(self) -> bool:
        return bool(self.check) and (self.fidelity_problem() is None or not self.strict)

    def fidelity_problem(self) -> str | None:
        return self.fidelity.problem() if self.fidelity is not None else None

    def raise_on_failure(self) -> CompressResult:
        """ParityError (exit 1) when the final check or the fidelity target fails."""
        self.check.raise_on_failure()
        problem = self.fidelity_problem()
        if problem is not None and self.strict:
            quantized = next((s.result for s in self.stages if s.name == "quantize"), None)
            kept = len((getattr(quantized, "fidelity", None) or {}).get("kept_float", {}))
            raise ParityError(f"the compressed model misses the fidelity target even after its guards acted: "
                              f"{problem} (the quantize guard kept {kept} nodes float)")
        return self

    @property
    def after(self) -> dict:
        return self.stages[-1].summary if self.stages else self.before

    def to_dict(self) -> dict:
        """The JSON report: sizes per stage, each stage's own report, and the final check in
        full (criteria, accuracy, cosine, failures: why a CI run passed or failed)."""
        return {
            "schema_version": 1,
            "output": str(self.output) if self.output else None,
            "passed": bool(self.check),
            "before": self.before,
            "latency_ms": self.latency_ms,
            "stages": [
                {"name": s.name, "seconds": s.seconds, "after": s.summary, "metric": s.metric,
                 "report": s.result.to_dict() if hasattr(s.result, "to_dict") else None}
                for s in self.stages
            ],
            "search": self.search,
            "check": self.check.to_dict(),
            "fidelity": None if self.fidelity is None else {
                **self.fidelity.to_dict(), "target": dataclasses.asdict(self.fidelity.target),
                "problem": self.fidelity_problem(), "retries": self.retries, "strict": self.strict},
        }


def _tolerances(pruned: bool, quantized: bool, max_accuracy_drop: float | None = None) -> Tolerances | str:
    """Exact when only exact stages ran. After pruning or quantization, the fidelity is judged
    by the guards' measure and target (:mod:`onnxprune.api.compress_fidelity`), so the check
    holds only what the user asked for by name (``max_accuracy_drop`` on labels) and reports
    the rest (cosine, SQNR, top-1 agreement) without failing on it."""
    if not (pruned or quantized):
        return "exact"
    return Tolerances(atol=None, rtol=0.0, max_accuracy_drop=max_accuracy_drop, preset="fidelity")


def _computes_in_half(model: ir.Model) -> bool:
    """Whether the weights of the layers quantization would take are all float16/bfloat16."""
    types = {node.inputs[1].const_value.dtype for node in model.graph
             if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.inputs) > 1
             and node.inputs[1] is not None and node.inputs[1].const_value is not None}
    return bool(types) and types <= {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


def _prune_options(given: PruneOptions | Mapping | None, criterion: str | None, ratio: float | None,
                   target_macs: float | None, target_params: float | None) -> PruneOptions | None:
    """The prune stage's options (None: no pruning). From a mapping, its PruneOptions fields
    (the other keys are :func:`onnxprune.prune` arguments); the criterion defaults as in
    :func:`onnxprune.prune` (thinet with calibration data, else l1)."""
    amount = {k: v for k, v in (("ratio", ratio), ("target_macs", target_macs), ("target_params", target_params))
              if v is not None}
    if isinstance(given, PruneOptions):
        if amount:  # the keywords say how much: the options' own amount gives way
            given = given.replace(**{"ratio": None, "target_macs": None, "target_params": None, **amount})
        return given.replace(criterion=criterion) if criterion is not None else given
    if not amount:
        return None
    fields = {k: v for k, v in (given or {}).items() if k in PruneOptions.fields()}
    return PruneOptions(**{**fields, **amount, "criterion": criterion or fields.get("criterion")})


def compress(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    calib=None,
    eval_data=None,
    labels: str | None = None,
    ratio: float | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    criterion: str | None = None,
    prune_options: PruneOptions | Mapping | None = None,
    quantize_model: bool = True,
    method: str = "minmax",
    samples: int | None = None,
    quantize_options: Mapping | None = None,
    max_accuracy_drop: float | None = None,
    min_fidelity: float | None = None,
    search: bool | None = None,
    providers: Sequence[str] | None = None,
    target_provider: str | None = None,
    provider_options: Mapping[str, Mapping[str, str]] | None = None,
    latency_batch: int | None = None,
    preprocess=None,
    progress: bool = False,
    executor=None,
    strict: bool = False,
) -> CompressResult:
    """Run :data:`STAGES` on ``model`` and save the result to ``output`` (if given).

    Pruning runs when ``ratio``, ``target_macs`` or ``target_params`` is given, or
    ``prune_options`` is a :class:`~onnxprune.passes.prune.PruneOptions` (those keywords then
    replace its values); ``prune_options`` may also be a mapping of extra :func:`onnxprune.prune`
    arguments. ``criterion`` (default as prune's, or the options' own); quantization runs when
    ``quantize_model`` and needs ``calib`` (extra :func:`onnxprune.quantize` arguments in
    ``quantize_options``). The check compares the result with the original on ``eval_data``
    (else ``calib``), judged as :func:`_tolerances` says, with ``max_accuracy_drop`` on
    ``labels``. The output is
    written even when the check fails (the result is falsy then), so it can be inspected.
    ``latency_batch``: also time ONNX Runtime (one thread, median) before and after on a
    random batch of that size, on ``target_provider`` (default CPU), which the check also
    runs on (with ``provider_options``).
    ``executor``: calibration and the check run on several workers (see
    :func:`onnxprune.quantize` and :func:`onnxprune.check`; same results).
    ``criterion``: as :func:`onnxprune.prune` (default thinet with ``calib``).

    Accuracy-driven search (``search``; by default when a budget is given without a pruning
    amount): ``max_accuracy_drop`` on ``labels`` or ``min_fidelity`` (top-1 agreement, else
    mean cosine) on the held-out ``eval_data``. Each probe prunes a copy of the optimized
    model to a share of MACs, quantizes it as the stages would, and is judged as the *final*
    model on ``eval_data`` (:func:`~onnxprune.api.search_api.search_keep`); the stages then
    run at the strongest share that held, or without pruning when none did. The final check
    then judges exactly that budget. With ``eval_data``, every stage reports its metric.

    Without a search, a pruned or quantized model is judged as its stages' guards judge
    (:mod:`onnxprune.api.compress_fidelity`: cosine and argmax agreement/decision IoU >= 0.9,
    or ``quantize_options['min_fidelity']``); below it, quantize reruns with a stricter guard.
    ``strict``: the guards fail (exit 1, culprits named) instead of keeping nodes float or
    channel groups whole, and no rerun.
    """
    target = eps.require(target_provider) if target_provider else None
    if target is not None:
        asked = [eps.resolve(p) for p in providers] if providers else [eps.CPU]
        providers = list(dict.fromkeys([*asked, target]))
    options = _prune_options(prune_options, criterion, ratio, target_macs, target_params)
    extra = {k: v for k, v in (prune_options or {}).items() if k not in PruneOptions.fields()} \
        if not isinstance(prune_options, PruneOptions) else {}
    pruning = options is not None
    budget = max_accuracy_drop is not None or min_fidelity is not None
    if search and pruning:
        raise UsageError("the search chooses how much to prune: do not give --ratio/--target-macs/--target-params")
    searching = bool(search) or (search is None and budget and not pruning)
    if searching:
        check_budget(eval_data, labels, max_accuracy_drop, min_fidelity, named_labels=False)  # the check's labels
        if calib is None:
            raise UsageError("the search prunes with calibration data: give --calib")
    elif min_fidelity is not None:
        raise UsageError("--min-fidelity is the budget of the search: drop --ratio/--target-macs/--no-search")
    if quantize_model and calib is None:
        raise UsageError("quantization needs calibration data (--calib); or skip it with --no-quantize")
    loaded, path = as_model(model)
    if output is not None:
        check_output_path(output, path)
    executor = resolve_executor(executor)
    # The original to check against. The stages edit `loaded` in place, but replace tensors
    # rather than write into them, so a clone sharing the weights stays as it was (a copy
    # through protobuf would cost a copy of every weight, and lose external data's folder).
    if quantize_model and _computes_in_half(loaded):
        raise UsageError("the model computes in float16 and INT8 quantization starts from float32: "
                         "pass --no-quantize (prune and check still run), or export the model in float32")
    reference = loaded.clone()
    # Every input is checked before any work (README promise): names, shapes, dtypes, NaN/Inf
    # of both data sets streamed once, labels read, and the criteria able to be evaluated.
    tolerances = _tolerances(pruning, quantize_model, max_accuracy_drop) if not searching else \
        _budget_tolerances(loaded, max_accuracy_drop, min_fidelity)
    criteria = {"max_accuracy_drop": max_accuracy_drop}
    calib_data = None
    if calib is not None:
        calib_data = calib if hasattr(calib, "batches") else open_dataset(calib, loaded, preprocess=preprocess)
        for _ in calib_data.batches():
            pass
    feed = prepare_check_data(loaded, eval_data if eval_data is not None else calib_data, tolerances=tolerances,
                              criteria=criteria, labels=labels, preprocess=preprocess, validate=True)
    before = stats.size_summary(loaded)

    stages: list[StageRecord] = []
    judge = None if eval_data is None or feed.dataset is None else \
        Judge(reference, feed.dataset, feed.label_array, max_accuracy_drop, min_fidelity, label_key=labels)

    def run(name: str, fn) -> None:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        metric = judge(result.model) if judge is not None else None
        stages.append(StageRecord(name, seconds, stats.size_summary(result.model), result, metric))

    # The bn criterion scores the BatchNorms: fold them after pruning (prune does), not before.
    mapping = {} if isinstance(prune_options, PruneOptions) else dict(prune_options or {})
    fields = {k: v for k, v in mapping.items()
              if k in PruneOptions.fields() and k not in ("ratio", "target_macs", "target_params")}
    chosen = criterion or fields.get("criterion")
    keep_bn = (options.criterion if options is not None else chosen) == "bn" and (pruning or searching)
    passes = [p for p in DEFAULT_PIPELINE if p not in BN_FOLDING] if keep_bn else DEFAULT_PIPELINE
    run("optimize", lambda: optimize(loaded, passes=passes, progress=progress))
    searched = None
    if searching:
        def at(keep: float) -> PruneOptions:
            return PruneOptions(**{**fields, "criterion": chosen, "target_macs": keep})

        quantizing = dict(method=method, samples=samples, preprocess=preprocess, target_provider=target,
                          provider_options=provider_options, executor=executor, **dict(quantize_options or {}))
        searched = _search(loaded, judge, calib_data, calib if quantize_model else None, at, extra, quantizing)
        options = at(searched["chosen"]) if searched["chosen"] is not None else None
    if options is not None:  # the prune guard compares on the held-out data (a search judged its choice itself)
        held = open_dataset(eval_data, loaded, preprocess=preprocess) if isinstance(eval_data, (str, os.PathLike)) \
            else eval_data
        guarded = {"eval_data": held, "guard": not searching and extra.get("guard", True)}
        run("prune", lambda: prune(loaded, options=options, calib=calib_data, latency_runs=0, progress=progress,
                                   **{**extra, **guarded}))
    current = stages[-1].result.model
    quantizing = {"calib": calib, "method": method, "samples": samples, "preprocess": preprocess, "progress": progress,
                  "target_provider": target, "provider_options": provider_options, "executor": executor,
                  **({"strict": True} if strict else {}), **dict(quantize_options or {})}
    unquantized = current.clone() if quantize_model and not strict and not searching else None
    if quantize_model:
        run("quantize", lambda: quantize(current, **quantizing))
        current = stages[-1].result.model
    fidelity, retries = None, []
    if (pruning or quantize_model) and not searching:
        aim = Target.of(quantizing.get("min_fidelity"))
        fidelity = compress_fidelity.measure_batches(reference, current, feed, feed.batch_size, aim)

        def requantize(guard_target: float) -> tuple[object, Fidelity]:
            assert unquantized is not None
            redone = quantize(unquantized.clone(), **{**quantizing, "min_fidelity": guard_target})
            return redone, compress_fidelity.measure_batches(reference, redone.model, feed, feed.batch_size, aim)

        better, fidelity, retries = compress_fidelity.hold(fidelity, requantize if unquantized else None, aim)
        if better is not None:
            stages[-1] = dataclasses.replace(stages[-1], result=better, summary=stats.size_summary(better.model),
                                             metric=judge(better.model) if judge is not None else None)
            current = better.model

    with profiling.phase("self-check"):
        result = check(reference, current, feed, providers=providers, provider_options=provider_options,
                       tolerances=tolerances, criteria=criteria, progress=progress,
                       executor=executor)
    latency = None
    if latency_batch:
        feeds = runtime.random_inputs(reference, batch=latency_batch)
        where = {"providers": [target, eps.CPU] if target else [eps.CPU], "provider_options": provider_options}
        latency = {"before": runtime.latency_ms(reference, feeds, **where),
                   "after": runtime.latency_ms(current, feeds, **where),
                   "batch": latency_batch, "threads": 1, "provider": target or eps.CPU}
    saved = save_model(current, output, input_path=path) if output is not None else None
    return CompressResult(current, before, stages, result, latency, saved, searched, fidelity, retries, strict)


def _budget_tolerances(model: ir.Model, max_accuracy_drop: float | None, min_fidelity: float | None) -> Tolerances:
    """The final check of a searched model judges the budget the search held, nothing else."""
    if max_accuracy_drop is not None:
        return Tolerances(atol=None, rtol=0.0, max_accuracy_drop=max_accuracy_drop, preset="fidelity")
    key = "min_top1" if may_classify(model) else "min_cosine"
    return Tolerances(atol=None, rtol=0.0, **{key: min_fidelity})


def _search(model: ir.Model, judge: Judge, calib_data, quantize_calib, options_at, extra: dict,
            quantizing: dict, lowest: float = 0.2, tolerance: float = 0.025) -> dict:
    """Probe prune (+ quantize) on copies of ``model`` and judge each as the final model."""
    proto = ir.to_proto(model)
    probes: list[Probe] = []

    def probe(keep: float) -> Probe:
        copy = ir.serde.deserialize_model(proto)
        pruned = prune(copy, options=options_at(keep), calib=calib_data, latency_runs=0,
                       **{**extra, "guard": False})  # the search judges every probe itself
        final = pruned.model
        if quantize_calib is not None:
            final = quantize(final, calib=quantize_calib, **quantizing).model
        measured = judge(final)
        macs = pruned.before["macs"], pruned.after["macs"]
        p = Probe(keep, 1 - macs[1] / macs[0] if macs[0] else 0.0, measured["fidelity"], measured["accuracy"],
                  judge.meets(measured))
        probes.append(p)
        return p

    keep = search_keep(probe, lowest, tolerance)
    return {"budget": judge.budget, "baseline": judge.baseline, "probes": [p.to_dict() for p in probes],
            "chosen": keep if keep < 1.0 else None}
