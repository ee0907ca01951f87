"""Real pretrained models with task metrics, for the accuracy benchmark (bench/accuracy_bench.py).

Models come from PyPI wheels (rapidocr_onnxruntime: PP-OCRv4 text recognizer, text detector,
text-direction classifier); ``--models DIR`` names the folder the wheels were extracted to
(``pip download --no-deps rapidocr_onnxruntime`` then unzip). Data is rendered offline with
Pillow and the DejaVu fonts: text lines (recognizer, classifier: upright or turned by 180°, the
ground truth) and pages of scattered lines (detector). Metrics compare a compressed model with
the fp32 original on held-out samples:

- recognizer: share of lines whose greedy CTC decoding is identical to the original's;
- detector: IoU of the text masks (probability > 0.3), summed over the images;
- classifier: top-1 agreement, and accuracy against the ground truth.

The Paddle exports have symbolic height/width dims: each model is copied with them fixed
(batch stays symbolic), which is what a deployment at a fixed input size does.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

CACHE = Path(tempfile.gettempdir()) / "onnxprune-bench" / "realtasks"  # the shape-fixed copies
FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVu*.ttf"))
WORDS = string.ascii_letters + string.digits


def _text(rng: np.random.Generator, length: int) -> str:
    words = ["".join(rng.choice(list(WORDS), rng.integers(2, 8))) for _ in range(length)]
    return " ".join(words)


def render_line(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One text line, dark on light, left-aligned, [H, W, 3] uint8."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(rng.choice(FONTS)), int(rng.integers(height * 5 // 8, height * 7 // 8)))
    back = tuple(int(v) for v in rng.integers(190, 256, 3))
    fore = tuple(int(v) for v in rng.integers(0, 70, 3))
    text = _text(rng, int(rng.integers(1, 4)))
    box = font.getbbox(text)
    image = Image.new("RGB", (max(box[2] + 8, 16), height), back)
    ImageDraw.Draw(image).text((4, (height - box[3] - box[1]) // 2 - box[1] // 2), text, font=font, fill=fore)
    scale = min(1.0, width / image.width)
    image = image.resize((max(int(image.width * scale), 1), height))
    canvas = Image.new("RGB", (width, height), back)
    canvas.paste(image, (0, 0))
    pixels = np.asarray(canvas, dtype=np.float32)
    return np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255)


def render_page(rng: np.random.Generator, size: int) -> np.ndarray:
    """A page with a few text lines at random places, [S, S, 3] float."""
    page = np.full((size, size, 3), rng.integers(200, 256), dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):
        h = int(rng.integers(16, 40))
        w = int(rng.integers(size // 4, size * 3 // 4))
        line = render_line(rng, h, w)
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        page[y : y + h, x : x + w] = line
    return page


def _rec_norm(images: np.ndarray) -> np.ndarray:
    return ((images / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)


def _det_norm(images: np.ndarray) -> np.ndarray:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)


def ctc_decode(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding (blank 0) of [N, T, C] to label sequences."""
    out = []
    for seq in probs.argmax(-1):
        keep = np.concatenate([[True], seq[1:] != seq[:-1]]) & (seq != 0)
        out.append(tuple(int(v) for v in seq[keep]))
    return out


@dataclasses.dataclass
class Task:
    """A real model, calibration and held-out inputs, and a metric against the original."""

    name: str
    model: Path  # shape-fixed copy
    input: str
    calib: np.ndarray
    heldout: np.ndarray
    metric: str
    score: Callable[[np.ndarray, np.ndarray], float]  # (reference outputs, outputs) -> fidelity
    labels: np.ndarray | None = None  # held-out ground truth (classifier)
    more: np.ndarray | None = None  # further calibration samples (rendered after the held-out ones)


def fix_shapes(source: Path, target: Path, dims: list[int | str]) -> Path:
    """A copy of ``source`` with its first input's dims set to ``dims`` (str: symbolic)."""
    model = onnx.load(source)
    shape = model.graph.input[0].type.tensor_type.shape
    for dim, value in zip(shape.dim, dims):
        dim.Clear()
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    for out in model.graph.output:  # output dims are re-derived by shape inference
        for dim in out.type.tensor_type.shape.dim:
            dim.Clear()
            dim.dim_param = "?"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(onnx.shape_inference.infer_shapes(model), target)
    return target


def _rec_score(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean([a == b for a, b in zip(ctc_decode(ref), ctc_decode(out))]))


def _iou_score(ref: np.ndarray, out: np.ndarray) -> float:
    a, b = ref > 0.3, out > 0.3
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _top1_score(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.mean(ref.argmax(-1) == out.argmax(-1)))


def _page_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, None]:
    return _det_norm(np.stack([render_page(rng, 320) for _ in range(n)])), None


def _line_batch(rng: np.random.Generator, width: int, turn: bool, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` text lines; with ``turn``, half turned by 180 degrees (the labels: the ground truth)."""
    lines = [render_line(rng, 48, width) for _ in range(n)]
    if not turn:
        return _rec_norm(np.stack(lines)), None
    turned = rng.random(n) < 0.5
    lines = [ln[::-1, ::-1] if t else ln for ln, t in zip(lines, turned)]
    return _rec_norm(np.stack(lines)), turned.astype(np.int64)


def load_tasks(models: Path, cache: Path, calib: int = 64, heldout: int = 128, names=None,
               more: int = 0) -> list[Task]:
    """The three OCR tasks (those whose model file is under ``models``); ``more`` further
    calibration samples are drawn after the held-out ones (so those stay the same samples)."""
    found = {p.name: p for p in Path(models).rglob("*.onnx")}
    tasks = []
    specs = [
        ("ocr-rec", "ch_PP-OCRv4_rec_infer.onnx", ["N", 3, 48, 320], "decoded-text agreement"),
        ("ocr-det", "ch_PP-OCRv4_det_infer.onnx", ["N", 3, 320, 320], "text-mask IoU"),
        ("ocr-cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", ["N", 3, 48, 192], "top-1 agreement"),
    ]
    for name, file, dims, metric in specs:
        if file not in found or (names and name not in names):
            continue
        model = fix_shapes(found[file], cache / f"{name}.onnx", dims)
        rng = np.random.default_rng(["ocr-rec", "ocr-det", "ocr-cls"].index(name) + 1)
        if name == "ocr-det":
            make = functools.partial(_page_batch, rng)
            score = _iou_score
        else:
            make = functools.partial(_line_batch, rng, dims[3], name == "ocr-cls")
            score = _rec_score if name == "ocr-rec" else _top1_score
        calib_x, _ = make(calib)
        held_x, labels = make(heldout)
        more_x = make(more)[0] if more else None
        input_name = onnx.load(model, load_external_data=False).graph.input[0].name
        tasks.append(Task(name, model, input_name, calib_x, held_x, metric, score, labels, more_x))
    return tasks


def run(model, x: np.ndarray, input_name: str, batch: int = 16) -> np.ndarray:
    """The first output of ``model`` (path or ModelProto bytes) on ``x``, in batches."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    sess = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {input_name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])
