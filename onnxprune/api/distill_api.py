"""Distillation: train a pruned model's weights to match the original's outputs.

``distill(student, teacher, calib)`` runs the original (``teacher``) with ONNX Runtime on
unlabelled calibration data, converts the pruned model (``student``) to PyTorch
(:mod:`.torch_bridge`, the ``distill`` extra), and trains its weights with Adam (steps relative
to each tensor's scale, :func:`_adam`) to match the
teacher's outputs: the mean squared error of each output divided by that output's variance
under the teacher (so that outputs on different scales weigh alike). A held-out share of the
samples is never trained on: the epoch with the lowest held-out loss is kept; an epoch that
does not lower it is undone and the learning rate halved; training stops after ``patience``
such epochs in a row (or after ``epochs`` / ``seconds``), and the
weights are written back into the ONNX graph by name only if the held-out loss went down.
A last ONNX Runtime run checks that the written model computes what torch trained.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.api.torch_bridge import to_torch
from onnxprune.calibration import Dataset, open_dataset
from onnxprune.errors import UsageError


@dataclasses.dataclass
class DistillResult:
    status: str  # "trained" (weights written), "unchanged" (no held-out gain), "declined"
    reason: str | None = None
    samples: tuple[int, int] = (0, 0)  # trained on, held out
    epochs: int = 0
    best_epoch: int = 0
    seconds: float = 0.0
    loss_before: float | None = None  # held-out, relative to each output's variance
    loss_after: float | None = None
    tensors: int = 0  # initializers written back
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _samples(dataset: Dataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The data as single-sample feeds when the batches split along axis 0, else as batches."""
    out = []
    for feeds in dataset.batches(batch_size):
        n = dataset.batch_len(feeds)
        if dataset.fixed_batch or not all(v.ndim and v.shape[0] == n for v in feeds.values()):
            out.append(dict(feeds))
        else:
            out += [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(n)]
    return out


def _batches(items: list[dict], size: int, rng: np.random.Generator | None) -> list[dict]:
    """Stack samples of equal shapes into batches of ``size`` (shuffled with ``rng``)."""
    order = rng.permutation(len(items)) if rng is not None else np.arange(len(items))
    by_shape: dict[tuple, list[dict]] = {}
    for i in order:
        key = tuple((k, v.shape) for k, v in sorted(items[i].items()))
        by_shape.setdefault(key, []).append(items[i])
    batches = []
    for group in by_shape.values():
        for start in range(0, len(group), size):
            part = group[start:start + size]
            batches.append({k: np.concatenate([p[k] for p in part]) for k in part[0]})
    return batches


def distill(
    student: ir.Model,
    teacher: ir.Model,
    calib,
    *,
    epochs: int = 30,
    seconds: float = 60.0,
    lr: float = 1e-2,
    batch_size: int = 16,
    holdout: float = 0.2,
    patience: int = 4,
    seed: int = 0,
    hints: int = 0,
) -> DistillResult:
    """Train ``student``'s weights (in place) towards ``teacher``'s outputs on ``calib``.

    ``hints``: also match up to this many intermediate tensors that both models compute
    under the same name and shape (layers whose channels were kept; spread over the graph),
    together weighted as one output; the held-out loss that stops training counts the
    outputs only. The teacher must then be the original *after the same exact clean-up* as
    the student (``prune`` folds both), so that a name means the same tensor in both."""
    import torch

    if epochs < 1 or seconds <= 0:
        raise UsageError(f"distillation needs at least one epoch and some time (given {epochs}, {seconds} s)")
    start = time.perf_counter()
    dataset = calib if isinstance(calib, Dataset) else open_dataset(calib, teacher)
    items = _samples(dataset, batch_size)
    if len(items) < 2:
        return DistillResult("declined", "distillation needs at least 2 calibration samples (one held out)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    held = max(1, round(len(items) * holdout))
    train = [items[i] for i in order[held:]]
    matched = _hint_names(student, teacher, items[order[0]], hints)
    try:
        graph = to_torch(student, items[order[0]], matched)
    except UsageError as error:
        return DistillResult("declined", str(error), (len(train), held))
    if not graph.bindings:
        return DistillResult("declined", "no trainable weight found", (len(train), held), notes=graph.notes)
    names = [v.name for v in teacher.graph.outputs]
    real = len(names)
    teacher = _with_outputs(teacher, matched)
    names += matched
    stack = 1 if dataset.fixed_batch else batch_size  # a model of fixed batch size takes its batches as they are
    heldout = _batches([items[i] for i in order[:held]], stack, None)
    train = _batches(train, stack, rng)  # fixed batches, their order shuffled per epoch
    with runtime.session(teacher) as sess:
        def targets(feeds):
            return [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in runtime.run_session(sess, names, feeds)]
        heldout_targets = [targets(b) for b in heldout]
        train_targets = [targets(b) for b in train]
    floats = [i for i, t in enumerate(heldout_targets[0]) if t.is_floating_point()]
    variance = {i: max(float(torch.cat([t[i].reshape(-1) for t in train_targets]).var()), 1e-12) for i in floats}
    weight = {i: 1.0 if i < real else 1.0 / len(matched) for i in floats}  # the hints weigh as one output
    result = DistillResult("unchanged", samples=(len(items) - held, held), notes=list(graph.notes))
    if matched:
        result.notes.append(f"also matched {len(matched)} intermediate tensors: {', '.join(matched)}")

    def loss_of(outputs, target, upto: int = len(names)) -> torch.Tensor:
        return sum(weight[i] * torch.mean((outputs[i].float() - target[i]) ** 2) / variance[i]
                   for i in floats if i < upto)

    def heldout_loss() -> float:
        with torch.no_grad():
            return float(np.mean([float(loss_of(graph(b), t, real)) for b, t in zip(heldout, heldout_targets)]))

    # The converter must compute what ONNX Runtime computes before its gradients mean anything.
    with torch.no_grad():
        mismatch = _mismatch(graph(heldout[0]), runtime.run(student, heldout[0]), graph.outputs[:real])
    if mismatch > 1e-2:
        result.status, result.reason = "declined", f"onnx2torch's conversion differs from ONNX Runtime ({mismatch:.2g})"
        return result
    optimizer = _adam(graph.parameters(), lr)
    best = result.loss_before = heldout_loss()
    best_state, stale = graph.state(), 0
    for epoch in range(1, epochs + 1):
        for i in rng.permutation(len(train)):
            optimizer.zero_grad()
            loss = loss_of(graph(train[i]), train_targets[i])
            loss.backward()
            optimizer.step()
            if time.perf_counter() - start > seconds:
                break
        result.epochs = epoch
        current = heldout_loss()
        if current < best:
            best, best_state, stale, result.best_epoch = current, graph.state(), 0, epoch
        else:  # overshot: back to the best weights, with half the step (a fresh Adam state)
            stale += 1
            graph.restore(best_state)
            lr /= 2
            optimizer = _adam(graph.parameters(), lr)
        if stale >= patience or time.perf_counter() - start > seconds:
            break
    result.loss_after = best
    result.seconds = time.perf_counter() - start
    if result.best_epoch == 0:
        result.reason = "the held-out loss did not go down: weights left as they were"
        return result
    graph.restore(best_state)
    saved = {b.name: student.graph.initializers[b.name].const_value for b in graph.bindings}
    result.tensors = len(graph.write_back(student))
    with torch.no_grad():
        mismatch = _mismatch(graph(heldout[0]), runtime.run(student, heldout[0]), graph.outputs[:real])
    if mismatch > 1e-2:  # never hand on a model that does not compute what was trained
        for name, tensor in saved.items():
            student.graph.initializers[name].const_value = tensor
        result.status, result.tensors = "declined", 0
        result.reason = f"the written weights compute otherwise in ONNX Runtime ({mismatch:.2g})"
        return result
    result.status = "trained"
    result.seconds = time.perf_counter() - start
    return result


def _adam(parameters: list, lr: float):
    """Adam with steps relative to each tensor's size: ``lr`` times its root mean square. Adam's
    step is about ``lr`` per weight whatever the weight's scale, so one absolute rate is too
    large for a tensor of small weights and too small for one of large weights (cf. LARS/LAMB)."""
    import torch

    groups = [{"params": [p], "lr": lr * max(float(p.detach().pow(2).mean().sqrt()), 1e-8)} for p in parameters]
    return torch.optim.Adam(groups)


def _with_outputs(model: ir.Model, names: list[str]) -> ir.Model:
    """A clone of ``model`` that also outputs the tensors ``names`` (the original is untouched)."""
    if not names:
        return model
    clone = model.clone()
    values = {v.name: v for node in clone.graph for v in node.outputs}
    clone.graph.outputs.extend(values[name] for name in names)
    return clone


def _hint_names(student: ir.Model, teacher: ir.Model, sample: dict, count: int) -> list[str]:
    """Up to ``count`` float tensors both models compute under one name and with one shape on
    ``sample``, each the only output of its node, evenly spread along the student's graph."""
    if count <= 0:
        return []
    ours = {v.name for v in teacher.graph.outputs} | {v.name for v in student.graph.outputs}
    theirs = {v.name for node in teacher.graph for v in node.outputs}
    names = [n.outputs[0].name for n in student.graph if len(n.outputs) == 1 and n.outputs[0].name in theirs
             and n.outputs[0].name not in ours and n.op_type not in ("Shape", "Constant", "Cast", "Gather")]
    names = [names[int(i)] for i in np.unique(np.linspace(0, len(names) - 1, min(len(names), 4 * count)))] \
        if names else []
    a = runtime.run(_with_outputs(student, names), sample)
    b = runtime.run(_with_outputs(teacher, names), sample)
    same = [n for n in names if a[n].shape == b[n].shape and a[n].ndim > 1 and a[n].dtype == np.float32]
    return [same[int(i)] for i in np.unique(np.linspace(0, len(same) - 1, min(len(same), count)))] if same else []


def _mismatch(torch_outputs, ort_outputs: dict, names: list[str]) -> float:
    """Largest difference between torch and ONNX Runtime, relative to the output's range."""
    worst = 0.0
    for tensor, name in zip(torch_outputs, names):
        a, b = tensor.detach().numpy().astype(np.float64), np.asarray(ort_outputs[name], dtype=np.float64)
        if a.shape != b.shape:
            return float("inf")
        worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)) if b.size else 0.0)
    return worst
