"""`onnxprune prune`."""

from __future__ import annotations

import click

from onnxprune.api.prune_api import PruneResult, prune
from onnxprune.cli._common import (
    check_side_outputs,
    echo,
    html_option,
    input_shape_option,
    json_option,
    show_progress,
    size_row,
    split_lists,
    with_profile,
    write_html_report,
    write_report,
)
from onnxprune.errors import UsageError
from onnxprune.passes.prune import CRITERIA, DATA_CRITERION, PruneOptions, PruneReport
from onnxprune.passes.prune.options import REFIT_INPUTS
from onnxprune.report import change, table


def _criteria_help() -> str:
    return "\n\n".join(f"  {name}: {text}" for name, text in CRITERIA.items())


def _group_ratios(values: tuple[str, ...]) -> dict[str, float]:
    ratios = {}
    for item in values:
        pattern, sep, ratio = item.rpartition("=")
        try:
            ratios[pattern] = float(ratio)
        except ValueError:
            sep = ""
        if not sep or not pattern:
            raise UsageError(f"--group-ratio '{item}': expected PATTERN=RATIO, e.g. 'layer1*=0.5'")
    return ratios


@click.command("prune", epilog="Criteria:\n\n" + _criteria_help())
@click.argument("model", type=click.Path(dir_okay=False))
@input_shape_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the pruned model (not needed with --dry-run).")
@click.option("--ratio", type=float, help="Share of channels to remove, in [0, 1), ranked across all layers.")
@click.option("--target-macs", type=float, help="Share of MACs to keep, e.g. 0.6 (the ratio is searched).")
@click.option("--target-params", type=float, help="Share of parameters to keep (the ratio is searched).")
@click.option("--criterion", type=click.Choice(list(CRITERIA)), default=PruneOptions.default("criterion"), help=f"Channel importance  [default: {DATA_CRITERION} with --calib, else l1]")
@click.option("--uniform", is_flag=True, default=PruneOptions.default("uniform"), help="Apply the ratio within each layer instead of ranking globally.")
@click.option("--group-ratio", multiple=True, metavar="PATTERN=RATIO", help="Own ratio for the groups of matching nodes (repeatable).")
@click.option("--round-to", type=int, default=PruneOptions.default("round_to"), show_default=True, help="Kept channel counts are multiples of this (fast kernels); 1: exact ranking.")
@click.option("--min-channels", type=int, default=PruneOptions.default("min_channels"), show_default=True, help="Channels every group keeps at least.")
@click.option("--exclude", multiple=True, metavar="NODES", help="Node names or globs to leave untouched (repeatable or comma list).")
@click.option("--calib", type=click.Path(), help="Calibration data (.npz keyed by input name, folder of .npy/.npz/images).")
@click.option("--calib-limit", type=int, help="Use at most this many calibration samples.")
@click.option("--calib-labels", help="Label array in --calib: the loss of --criterion taylor (default: the Fisher loss, no labels).")
@click.option("--distill", is_flag=True, default=PruneOptions.default("distill"), help="Then train the pruned weights to match the original's outputs on --calib (needs onnxprune[distill]).")
@click.option("--distill-epochs", type=int, default=PruneOptions.default("distill_epochs"), show_default=True, help="Most epochs of --distill (it stops early on held-out samples).")
@click.option("--distill-time", type=float, default=PruneOptions.default("distill_time"), show_default=True, help="Most seconds of --distill.")
@click.option("--distill-hints", type=int, default=PruneOptions.default("distill_hints"), show_default=True, help="--distill also matches this many intermediate tensors whose channels were kept.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Calibration batch size.")
@click.option("--preprocess", help="Image preprocessing for an image folder, e.g. 'resize=256,crop=224,scale=1/255,mean=...,std=...'.")
@click.option("--fold/--no-fold", default=True, show_default=True, help="Run the exact clean-up (BatchNorm folding) after pruning.")
@click.option("--compensate/--no-compensate", default=PruneOptions.default("compensate"), show_default=True, help="Fold removed channels' mean into the next bias (from --calib, else BatchNorm statistics).")
@click.option("--reconstruct/--no-reconstruct", default=PruneOptions.default("reconstruct"), help="Refit the layers reading pruned channels by least squares on --calib  [default: on with --calib]")
@click.option("--refit-inputs", type=click.Choice(REFIT_INPUTS), default=PruneOptions.default("refit_inputs"), show_default=True, help="Where the refit reads each layer's inputs: the original model (one pass over --calib) or the pruned one, layer by layer (upstream error included: lower error, one pass per depth).")
@click.option("--sensitivity", "sensitivity_path", type=click.Path(exists=True, dir_okay=False), help="Curves from `onnxprune sensitivity -o`: with --target-macs/--target-params, each group gets its own ratio.")
@click.option("--max-accuracy-drop", type=float, help="Search the strongest MAC reduction whose accuracy on --eval/--labels drops at most this (e.g. 0.01).")
@click.option("--min-fidelity", type=float, help="Search the strongest MAC reduction keeping this top-1 agreement (cosine for other outputs) on --eval.")
@click.option("--eval", "eval_data", type=click.Path(), help="Held-out data: the fidelity guard compares on it (else on --calib samples), and --max-accuracy-drop/--min-fidelity measure it.")
@click.option("--guard/--no-guard", default=True, show_default=True, help="Compare the result with the original; when its outputs are destroyed (cosine < 0.9, top-1 < 90 %), keep the culprit groups whole.")
@click.option("--strict", is_flag=True, help="With the guard: fail (exit 1, culprits named, nothing written) instead of keeping groups whole.")
@click.option("--labels", help="Label array in --eval (for --max-accuracy-drop).")
@click.option("--dry-run", is_flag=True, default=PruneOptions.default("dry_run"), help="Print the plan and estimated savings; write nothing.")
@click.option("--latency-runs", type=int, default=10, show_default=True, help="ONNX Runtime CPU timing runs before/after (0: skip).")
@click.option("--threads", type=int, default=1, show_default=True, help="Threads for the timing runs.")
@click.option("--all-groups", is_flag=True, help="List every group, also those left whole.")
@json_option("--report")
@html_option
@click.pass_context
def prune_cmd(ctx, model, output, ratio, target_macs, target_params, criterion, uniform, group_ratio, round_to,
              min_channels, exclude, calib, calib_limit, calib_labels, distill, distill_epochs, distill_time, distill_hints,
              batch_size, preprocess, fold, compensate, reconstruct, refit_inputs, sensitivity_path, max_accuracy_drop, min_fidelity, eval_data, labels, guard, strict, dry_run, latency_runs,
              threads, all_groups, report_path, html_path) -> None:
    """Remove whole channels: a smaller, faster model on any runtime (not exact: check accuracy)."""
    if output is None and not dry_run:
        raise UsageError("-o/--output is required (or use --dry-run)")
    check_side_outputs(model, None if dry_run else output, report_path, html_path)
    if max_accuracy_drop is not None or min_fidelity is not None:
        _search(model, output, calib, eval_data, labels, max_accuracy_drop, min_fidelity, report_path, criterion=criterion,
                round_to=round_to, min_channels=min_channels, exclude=split_lists(exclude), batch_size=batch_size,
                compensate=compensate, reconstruct=reconstruct, refit_inputs=refit_inputs,
                **({"calib_labels": calib_labels} if calib_labels else {}),
                **({"distill": True, "distill_epochs": distill_epochs, "distill_time": distill_time,
                    "distill_hints": distill_hints} if distill else {}))
        return
    options = PruneOptions(
        criterion=criterion, ratio=ratio, target_macs=target_macs, target_params=target_params, uniform=uniform,
        group_ratios=_group_ratios(group_ratio), round_to=round_to, min_channels=min_channels,
        exclude=split_lists(exclude), compensate=compensate, reconstruct=reconstruct, refit_inputs=refit_inputs,
        dry_run=dry_run, distill=distill, distill_epochs=distill_epochs, distill_time=distill_time,
        distill_hints=distill_hints,
    )
    result = prune(
        model, None if dry_run else output, options=options, calib=calib, calib_labels=calib_labels,
        calib_limit=calib_limit,
        batch_size=batch_size, preprocess=preprocess, fold=fold, sensitivity=sensitivity_path,
        latency_runs=latency_runs, threads=threads, progress=show_progress(ctx), eval_data=eval_data, guard=guard,
        strict=strict,
    )
    echo(format_groups(result.report, all_groups))
    if result.distill is not None:
        echo(format_distill(result.distill))
    echo("")
    echo(format_summary(result))
    if result.fidelity is not None:
        echo("\n" + "\n".join(result.fidelity.lines()))
    if dry_run:
        echo("\ndry run: nothing written")
    else:
        echo(f"\nwrote {result.output}")
    write_report(report_path, with_profile(result.to_dict()))
    write_html_report(html_path, result.to_dict(), "prune")


def format_distill(d) -> str:
    """One line: what distillation did, its held-out loss before and after."""
    if d.status == "declined":
        return f"distillation declined: {d.reason}"
    loss = f"held-out loss {d.loss_before:.4f} -> {d.loss_after:.4f}" if d.loss_before is not None else ""
    where = f"{d.samples[0]} samples, {d.samples[1]} held out, {d.epochs} epochs (best {d.best_epoch}), {d.seconds:.1f} s"
    done = f"{d.tensors} weight tensors written back" if d.status == "trained" else (d.reason or "unchanged")
    return f"distillation: {loss} ({where}); {done}"


def _search(model, output, calib, eval_data, labels, max_accuracy_drop, min_fidelity, report_path, **options) -> None:
    from onnxprune.api.search_api import prune_within

    if calib is None or output is None:
        raise UsageError("the accuracy search prunes with --calib and writes -o/--output")
    found = prune_within(model, output, calib=calib, eval_data=eval_data, labels=labels,
                         max_accuracy_drop=max_accuracy_drop, min_fidelity=min_fidelity, **options)
    rows = [(f"{p.keep_macs:.3f}", f"{p.macs_removed:.1%}", f"{p.fidelity:.4f}",
             "" if p.accuracy is None else f"{p.accuracy:.4f}", "yes" if p.passed else "no") for p in found.probes]
    click.echo(table(["keep MACs", "MACs removed", "fidelity", "accuracy", "within budget"], rows, align="rrrrl"))
    base = found.baseline
    click.echo(f"original: {base['metric']} 1.0" + (f", accuracy {base['accuracy']:.4f}" if base["accuracy"] is not None else ""))
    if found.best is None:
        click.echo("no pruned model met the budget: the original is written unchanged")
    else:
        click.echo(f"chosen: {found.best.macs_removed:.1%} of the MACs removed")
    click.echo(f"\nwrote {found.output}")
    write_report(report_path, found.to_dict())


def format_groups(report: PruneReport, all_groups: bool = False) -> str:
    rows = []
    for g in report.groups:
        if not all_groups and g.status == "kept" and not g.reason:
            continue
        s = g.scores
        rows.append((
            g.name, g.status, f"{g.channels} → {g.kept}",
            f"{(g.channels - g.kept) / g.channels:.0%}" if g.channels else "",
            f"{s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f}" if s else "",
            f"{s['max_removed']:.2f}" if s and s["max_removed"] is not None else "",
            _shorten(g.members[1:], 2) if len(g.members) > 1 else "", _ranges(g.removed),
            g.reason or "",
        ))
    hidden = len(report.groups) - len(rows)
    headers = ["group", "status", "channels", "removed", "score min/med/max", "max removed", "also", "channels removed",
               "note"]
    text = table(headers, rows, align="llrrrrlll", optional=[4, 5])  # narrow terminal: scores give way
    target = ", ".join(f"keep {share:.0%} of {'MACs' if k == 'macs' else 'parameters'}" for k, share in (report.target or {}).items())
    ratio = f"ratio {report.ratio:.3f}" + (f" (searched to {target})" if target else "")
    lines = [f"criterion {report.criterion}, {ratio}; scores normalised by each group's mean", text]
    if report.reconstruction:
        lines += ["layers reading pruned channels, refit by least squares on the calibration data "
                  "(relative output error: ‖Y − Ŷ‖ / ‖Y − mean Y‖ vs the original layer)", format_refits(report)]
    refit_all = report.reconstruction is not None and all(f.status != "skipped" for f in report.reconstruction)
    if report.compensation and not refit_all:  # else every bias came from the refit
        lines.append(f"removed channels' mean folded into the next layers' biases, from {report.compensation}")
    if hidden:
        lines.append(f"({hidden} groups kept whole not shown; --all-groups lists them)")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _shorten(names: list[str], shown: int) -> str:
    """The first names of a list, and how many more (the JSON report has them all)."""
    return ", ".join(names[:shown]) + (f" +{len(names) - shown}" if len(names) > shown else "")


def _ranges(indices: list[int], width: int = 24) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8', cut to ``width`` characters with the count left."""
    parts, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    text = ",".join(parts)
    if len(text) <= width:
        return text
    cut = text[:width].rsplit(",", 1)[0]
    return f"{cut},… ({len(indices)})"


def format_refits(report: PruneReport) -> str:
    rows = [
        (f.layer, f.op, f"{f.inputs[0]} → {f.inputs[1]}" if f.inputs[0] is not None else "", f.status,
         _errors(f), f.rows or "", f.note or "")
        for f in report.reconstruction
    ]
    return table(["layer", "op", "inputs", "status", "output error (held-out)", "rows", "note"], rows, align="llrlrrl")


def _errors(fit) -> str:
    """Held-out errors when the refit had held-out samples, else those on the fitted rows."""
    if fit.heldout_before is not None:
        return f"{fit.heldout_before:.3f} → {fit.heldout_after:.3f}"
    return "" if fit.error_before is None else f"{fit.error_before:.3f} → {fit.error_after:.3f} (fit)"


def format_summary(result: PruneResult) -> str:
    b, a = result.before, result.after
    ch = result.report.channels
    rows = [("channels (all groups)", ch[0], ch[1], change(*ch)),
            size_row("macs", b, a), size_row("parameters", b, a)]
    if not result.dry_run:
        rows += [size_row("weights_bytes", b, a), size_row("nodes", b, a)]
    if result.latency_ms:
        lat = result.latency_ms
        rows.append((f"latency (ORT CPU, {lat['threads']} thread, median)", f"{lat['before']:.3f} ms",
                     f"{lat['after']:.3f} ms", change(lat["before"], lat["after"])))
    headers = ["", "before", "after (estimated)" if result.dry_run else "after", "change"]
    text = table(headers, rows, align="lrrr")
    if result.fold:
        folded = sum(r.params_before - r.params_after for r in result.fold.records)
        text += f"\n(after: pruned, then folded; folding alone removed {folded:,} parameters)"
    return text
