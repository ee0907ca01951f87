"""The Python API behind `onnxprune prune`: prune, fold, measure, save, report.

Order: exact preparation (:data:`PREPARE`), pruning, then (``fold``) the exact clean-up
pipeline with BatchNorm folding. Pruning *before* BN folding keeps the BNs visible to the
``bn`` criterion and loses nothing for the others: ``l1``/``l2`` scale each filter by its BN
factor, so they rank exactly as on the folded model, and activation statistics do not depend
on the form of the graph; ``bn`` on a folded model falls back to l1 (no BNs left to read).
``bench/prune_bench.py --digits`` compares both orders ("fold first" rows).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxprune import runtime, stats
from onnxprune.api import prune_guard
from onnxprune.api.prune_guard import GuardResult
from onnxprune.calibration import Dataset, open_dataset
from onnxprune.errors import UsageError
from onnxprune.io import ModelLike, as_model, check_output_path, save_model
from onnxprune.passes.prune import PruneOptions, PrunePass, PruneReport
from onnxprune.pipeline import DEFAULT_PIPELINE, PipelineResult, ShapeVerifier, run_pipeline
from onnxprune.report import short_repr

SUMMARY_KEYS = ("nodes", "parameters", "weights_bytes", "macs")

# Exact clean-up before the analysis, without BatchNorm folding (see above): exporters hide
# constants behind Identity nodes (PyTorch deduplicates equal initializers, e.g. all-zero BN
# biases, into Identity outputs) and Constant nodes; the analysis needs them as initializers.
# Constant nodes become initializers too: Paddle's exporter writes every weight as one, and the
# least-squares refit (which rewrites initializers) skipped every such layer.
PREPARE: tuple[str, ...] = ("eliminate-identity", "fold-constants", "lift-constants", "remove-unused")


@dataclasses.dataclass
class PruneResult:
    """What `prune()` did: the model, the per-group report, and before/after numbers."""

    __repr__ = short_repr  # a line, not the whole graph

    model: ir.Model
    report: PruneReport
    before: dict
    after: dict  # measured on the result; estimated (MACs, parameters) for a dry run
    latency_ms: dict | None = None  # ONNX Runtime CPU median, {"before", "after", "threads", "runs"}
    output: Path | None = None
    dry_run: bool = False
    fold: PipelineResult | None = None
    distill: Any = None  # a DistillResult when distillation was asked for
    options: PruneOptions | None = None  # what was asked (with sensitivity: the allocated group ratios)
    fidelity: GuardResult | None = None  # the pruned model against the original (see prune_guard)

    def to_dict(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "dry_run": self.dry_run,
            "options": self.options.to_dict() if self.options else None,
            **self.report.to_dict(),
            "before": self.before,
            "after": self.after,
            "latency_ms": self.latency_ms,
            "fold": self.fold.to_dict()["passes"] if self.fold else None,
            "distill": self.distill.to_dict() if self.distill is not None else None,
            "fidelity": self.fidelity.to_dict() if self.fidelity else None,
        }


def prune(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    options: PruneOptions | None = None,
    calib=None,
    calib_labels: str | None = None,
    calib_limit: int | None = None,
    batch_size: int = 32,
    preprocess=None,
    fold: bool = True,
    sensitivity=None,
    latency_runs: int = 10,
    threads: int = 1,
    progress: bool = False,
    eval_data=None,
    guard: bool = True,
    strict: bool = False,
    **option_fields: Any,
) -> PruneResult:
    """Remove whole channels from ``model`` (in place) and save it to ``output`` if given.

    What and how much: ``options`` (a :class:`~onnxprune.passes.prune.PruneOptions`), or its
    fields as keywords (``ratio=0.3, criterion="l2"``...; with ``options``, they replace its
    values). ``criterion``: l1, l2, bn, activation, apoz, energy, thinet, taylor (the last five
    need ``calib``; taylor also the ``distill`` extra, and takes its loss from ``calib_labels``,
    a label array in ``calib``, when named); default
    :data:`~onnxprune.passes.prune.DATA_CRITERION` with ``calib``, else l1.
    ``calib``: anything :func:`onnxprune.calibration.open_dataset` reads, e.g. an .npz keyed by
    input name, or a Dataset; ``calib_limit`` samples at most; ``preprocess`` for an image folder.
    ``sensitivity`` (a :class:`~onnxprune.api.sensitivity_api.SensitivityResult` or its JSON
    file) with a target: each group gets its own ratio from the measured curves
    (:func:`~onnxprune.api.sensitivity_api.allocated_ratios`) instead of one global ranking.
    ``round_to``: kept channel counts are multiples of it (default
    :data:`~onnxprune.passes.prune.DEFAULT_ROUND_TO`; 1 lets the ranking alone decide, which can
    keep more accuracy on tiny layers but runs slower).
    ``fold``: run the exact clean-up pipeline (BatchNorm folding) after pruning.
    ``compensate`` takes its means from ``calib`` if given, else from BatchNorm statistics;
    ``reconstruct`` refits on ``calib`` (on by default with it).
    ``dry_run``: plan and report only (estimated MACs/parameters); nothing is pruned or
    written (the exact preparation, :data:`PREPARE`, still runs on an in-memory model).
    ``latency_runs``: ONNX Runtime CPU timing (median, ``threads`` threads, batch 1) before
    and after; 0 skips it. "before" numbers are those of the prepared model.
    ``distill`` (needs ``calib`` and the ``distill`` extra): then train the pruned model's
    weights to match the original's outputs on ``calib`` for at most ``distill_epochs`` epochs
    / ``distill_time`` seconds (:func:`~onnxprune.api.distill_api.distill`, held-out early stop),
    also matching ``distill_hints`` intermediate tensors whose channels were kept.
    ``guard``: run the result beside the original (on ``eval_data``, else calibration samples,
    else random inputs: a weaker check) and, when its outputs are destroyed (cosine < 0.9,
    top-1 agreement < 90 %), keep the culprit groups whole (:mod:`.prune_guard`); ``strict``
    raises :class:`~onnxprune.errors.ParityError` naming them instead.
    """
    options = _options(options, option_fields)
    data_args = {"calib": calib, "calib_labels": calib_labels, "calib_limit": calib_limit, "batch_size": batch_size,
                 "preprocess": preprocess, "fold": fold}  # for the guard's re-prunes
    if sensitivity is not None and options.target_macs is None and options.target_params is None:
        raise UsageError("sensitivity curves allocate a target: give target_macs or target_params")
    dry_run = options.dry_run
    criterion = options.criterion_for(calib is not None)
    if options.distill and calib is None:
        raise UsageError("distillation trains on calibration data: give --calib")
    if options.distill or criterion == "taylor":
        from onnxprune.api.torch_bridge import require

        require("--distill" if options.distill else "criterion 'taylor'")
    loaded, path = as_model(model)
    if output is not None and not dry_run:
        check_output_path(output, path)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (given {batch_size})")
    batches, data_notes = None, []
    if calib is not None:
        dataset = calib if isinstance(calib, Dataset) else \
            open_dataset(calib, loaded, limit=calib_limit, preprocess=preprocess, labels=calib_labels)
        batches = functools.partial(dataset.batches, batch_size)
        batches.total = -(-len(dataset) // (dataset.fixed_batch or batch_size))  # for progress bars
        data_notes = list(dataset.notes)
    run_pipeline(loaded, PREPARE)  # exact: same outputs, so "before" is measured after it
    teacher = loaded.clone() if options.distill and not dry_run else None  # stages replace tensors, never write
    if sensitivity is not None:
        from onnxprune.api.allocation import allocated_ratios

        group_ratios = allocated_ratios(
            loaded, sensitivity, target_macs=options.target_macs, target_params=options.target_params,
            round_to=options.round_to, min_channels=options.min_channels, exclude=options.exclude)
        options = options.replace(group_ratios=group_ratios, target_macs=None, target_params=None)
    gradients = None
    if criterion == "taylor" and calib is not None:  # gradients come from this layer, not a pass
        from onnxprune.api.taylor import Taylor

        gradients = Taylor(dataset, batch_size, dataset.labels)
    prune_pass = PrunePass(options, calibration=batches, criterion=gradients, progress=progress,
                           runner=runtime.OrtRunner())
    before = {k: v for k, v in stats.summarize(loaded).items() if k in SUMMARY_KEYS}
    timing = latency_runs > 0 and not dry_run
    feeds = (_first_sample(batches) or runtime.random_inputs(loaded)) if timing else None
    latency = {"before": runtime.latency_ms(loaded, feeds, runs=latency_runs, threads=threads)} if timing else None
    verifier = None if dry_run else ShapeVerifier()  # a pruned model that fails it is a bug, never handed on
    if verifier is not None:
        verifier.prepare(loaded, _first_sample(batches, 2))
    checked = None  # the guard's samples and the original's outputs, taken now: one model in memory at a time
    if guard and not dry_run:
        samples, source = _guard_feeds(loaded, batches, eval_data, data_args)
        acts = source != "random inputs" and sensitivity is None and not options.distill  # else it only warns
        checked = (samples, source, prune_guard.run_all(loaded, samples), loaded.clone() if acts else None)
    result = prune_pass(loaded)
    report = result.report
    report.notes += data_notes  # e.g. the image preprocessing used
    if verifier is not None and result.modified:
        verifier(loaded, prune_pass.name)
    if dry_run:
        after = {"macs": report.macs[1], "parameters": report.params[1], "estimated": True}
        return PruneResult(loaded, report, before, after, dry_run=True, options=options)
    folded = run_pipeline(loaded, DEFAULT_PIPELINE, progress=progress) if fold else None
    pruned = folded.model if folded else loaded
    distilled = None
    if teacher is not None:
        from onnxprune.api.distill_api import distill

        if options.distill_hints and fold:  # names then mean the same tensors in both (folding renames)
            teacher = run_pipeline(teacher, DEFAULT_PIPELINE).model
        distilled = distill(pruned, teacher, dataset, epochs=options.distill_epochs, seconds=options.distill_time,
                            hints=options.distill_hints)
        if distilled.status != "trained":
            report.notes.append(f"distillation {distilled.status}: {distilled.reason}")
    guarded = None
    if checked is not None and result.modified:
        redone, guarded = _guard(*checked, pruned, report, options, data_args, strict)
        if redone is not None:  # culprit groups kept whole: that prune's model, report and fold
            pruned, report, folded = redone.model, redone.report, redone.fold
    after = {k: v for k, v in stats.summarize(pruned).items() if k in SUMMARY_KEYS}
    if latency is not None:
        latency.update(after=runtime.latency_ms(pruned, feeds, runs=latency_runs, threads=threads),
                       threads=threads, runs=latency_runs)
    saved = save_model(pruned, output, input_path=path) if output is not None else None
    return PruneResult(pruned, report, before, after, latency, saved, False, folded, distilled, options, guarded)


def _guard_feeds(model: ir.Model, batches, eval_data, data_args: dict) -> tuple[list[dict], str]:
    """The samples the guard compares on, and what they are."""
    if eval_data is not None:
        dataset = eval_data if isinstance(eval_data, Dataset) else \
            open_dataset(eval_data, model, preprocess=data_args["preprocess"])
        return _take(dataset.batches(data_args["batch_size"]), prune_guard.EVAL_SAMPLES), "held-out evaluation data"
    if batches is not None:
        return _take(batches(), prune_guard.SAMPLES), "calibration data, which the pruning saw"
    return [runtime.random_inputs(model, batch=2, seed=s) for s in range(4)], "random inputs"


def _guard(feeds: list[dict], source: str, ref: dict, original: ir.Model | None, pruned: ir.Model,
           report: PruneReport, options: PruneOptions, data_args: dict,
           strict: bool) -> tuple[PruneResult | None, GuardResult]:
    """The fidelity guard (:mod:`.prune_guard`) on the original's outputs ``ref``; ``original``
    (None: warn only) is re-pruned, a fresh copy each time, with some groups kept whole (ratio 0)."""
    redone: list[PruneResult] = []

    def reprune(whole: list[str]):
        ratios = {**dict(options.group_ratios or {}), **{glob.escape(name): 0.0 for name in whole}}
        # a target's searched ratio stays: the other groups keep their plan (the target is not sought again)
        again = prune(original.clone(), None, options=options.replace(
            group_ratios=ratios, ratio=report.ratio, target_macs=None, target_params=None),
            latency_runs=0, guard=False, **data_args)
        redone.append(again)
        return again.model, again.report

    kept, _, found = prune_guard.guard(ref, pruned, report, feeds, source, reprune if original else None,
                                       strict=strict)
    return next((r for r in redone if r.model is kept), None), found


def _take(batches, count: int) -> list[dict]:
    """Whole batches until ``count`` samples (along each input's first axis)."""
    taken, seen = [], 0
    for feeds in batches:
        taken.append(feeds)
        seen += len(next(iter(feeds.values()))) if feeds else 0
        if seen >= count:
            break
    return taken


def _options(options: PruneOptions | None, fields: dict[str, Any]) -> PruneOptions:
    """``options`` with ``fields`` (the keyword spelling of its fields) applied."""
    unknown = sorted(set(fields) - set(PruneOptions.fields()))
    if unknown:
        raise TypeError(f"prune() got an unexpected keyword argument '{unknown[0]}'")
    return options.replace(**fields) if options is not None else PruneOptions(**fields)


def _first_sample(batches, n: int = 1) -> dict | None:
    """The first ``n`` real samples (their shapes are those the model will see), if there is data."""
    feeds = next(iter(batches()), None) if batches is not None else None
    if not feeds:
        return None
    dataset = getattr(getattr(batches, "func", None), "__self__", None)
    if isinstance(dataset, Dataset):  # cut along each input's batch axis (states [2, batch, ..], scalars)
        return dataset.head(feeds, min(n, dataset.batch_len(feeds)))
    return {k: v[:n] for k, v in feeds.items()}
