"""Offline evaluation data for the real models (``realmodels.py``), made on this machine.

Nothing is downloaded: text lines and pages are rendered with PIL (a system TrueType font when
there is one, else PIL's own), file-type samples are real files of this machine typed by their
extension, audio is synthesized (voiced harmonic bursts with formant-like envelopes between
pauses; espeak-ng speech when the binary is installed). Each maker returns the model inputs
and the ground truth. Deterministic for a given seed.
"""

from __future__ import annotations

import functools
import os
import shutil
import string
import subprocess
import sys
import tempfile
import wave
import zlib
from pathlib import Path

import numpy as np

ALPHABET = string.ascii_letters + string.digits
FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
         "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf")


def font(size: int):
    from PIL import ImageFont

    for path in FONTS:
        if os.path.exists(path):
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)


def words(rng: np.random.Generator, n: int, low: int = 3, high: int = 9) -> list[str]:
    return ["".join(rng.choice(list(ALPHABET), rng.integers(low, high + 1))) for _ in range(n)]


def text_line(text: str, height: int = 48, size: int = 30):
    """A black-on-white line of ``text`` (PIL image), cropped to the text with a margin."""
    from PIL import Image, ImageDraw

    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    image = Image.new("RGB", (right - left + 16, height), "white")
    ImageDraw.Draw(image).text((8 - left, (height - (bottom - top)) // 2 - top), text, fill="black", font=f)
    return image


def to_chw(image, width: int, height: int, mean=(0.5,) * 3, std=(0.5,) * 3, pad: bool = True) -> np.ndarray:
    """Resize keeping the aspect ratio (padding the right with white when ``pad``), normalize, CHW."""
    from PIL import Image

    if pad:
        scaled = min(width, max(1, round(image.width * height / image.height)))
        canvas = Image.new("RGB", (width, height), "white")
        canvas.paste(image.resize((scaled, height)), (0, 0))
        image = canvas
    else:
        image = image.resize((width, height))
    array = np.asarray(image, np.float32) / 255.0
    return ((array - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)


def text_lines(n: int, seed: int, width: int = 320) -> tuple[np.ndarray, list[str]]:
    """Recognizer inputs [n, 3, 48, width] and their strings."""
    rng = np.random.default_rng(seed)
    texts = words(rng, n)
    return np.stack([to_chw(text_line(t), width, 48) for t in texts]), texts


def flipped_lines(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Line classifier inputs [n, 3, 48, 192]: half turned 180 degrees (label 1)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = [text_line(t) for t in words(rng, n, 4, 10)]
    x = [to_chw(im.rotate(180) if lab else im, 192, 48) for im, lab in zip(images, labels)]
    return np.stack(x), labels.astype(np.int64)


def page(rng: np.random.Generator, width: int, height: int, lines: int):
    """A white page with a title, paragraphs of text lines, a table grid and a figure."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    mask = np.zeros((height, width), bool)
    y = int(height * 0.04)
    draw.text((width * 0.1, y), " ".join(words(rng, 3, 4, 8)), fill="black", font=font(max(12, height // 22)))
    y += height // 12
    size = max(10, height // 40)
    body = font(size)
    for _ in range(lines):
        x0 = int(width * rng.uniform(0.05, 0.12))
        text = " ".join(words(rng, int(rng.integers(2, 6))))
        box = draw.textbbox((x0, y), text, font=body)
        if box[2] < width and box[3] < height * 0.62:
            draw.text((x0, y), text, fill="black", font=body)
            mask[box[1] : box[3], box[0] : box[2]] = True
        y += int(size * rng.uniform(1.6, 2.2))
    top = int(height * 0.66)
    for i in range(4):  # table
        draw.line((width * 0.08, top + i * height * 0.06, width * 0.5, top + i * height * 0.06), fill="black", width=2)
    draw.rectangle((width * 0.58, top, width * 0.92, height * 0.92), outline="black", width=2)  # figure
    draw.ellipse((width * 0.64, top + 10, width * 0.86, height * 0.88), fill=(90, 120, 200))
    return image, mask


IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def pages(n: int, seed: int, width: int, height: int, lines: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Detector inputs [n, 3, height, width] (ImageNet-normalized) and text masks [n, height, width]."""
    rng = np.random.default_rng(seed)
    made = [page(rng, width, height, lines) for _ in range(n)]
    images = np.stack([to_chw(im, width, height, pad=False, **IMAGENET) for im, _ in made])
    return images, np.stack([m for _, m in made])


def rotated_pages(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Orientation classifier inputs [n, 3, 224, 224]: pages turned by k * 90 degrees (label k)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    x = [to_chw(page(rng, 448, 448, 14)[0].rotate(90 * int(k)), 224, 224, pad=False, **IMAGENET) for k in labels]
    return np.stack(x), labels.astype(np.int64)


# -- file types -----------------------------------------------------------------------------

EXTENSIONS = {
    ".py": "python", ".json": "json", ".html": "html", ".xml": "xml", ".sh": "shell", ".c": "c",
    ".h": "c", ".md": "markdown", ".png": "png", ".gz": "gzip", ".css": "css", ".js": "javascript",
    ".pdf": "pdf", ".ini": "ini", ".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".zip": "zip",
    ".rst": "rst", ".ttf": "ttf", ".jpg": "jpeg", ".svg": "svg", ".txt": "txt", ".pem": "pem",
    ".so": "elf", ".whl": "zip", ".pyc": "pythonbytecode", ".cfg": "ini", ".toml": "toml",
}
ROOTS = (sys.prefix, "/usr/share", "/usr/lib", "/etc", "/usr/include")


@functools.lru_cache(maxsize=4)
def machine_files(limit_per_type: int = 40, budget: int = 150_000) -> dict[str, list[Path]]:
    """Real files of this machine by type (from the extension), at most ``budget`` entries walked."""
    found: dict[str, list[Path]] = {}
    seen = 0
    for root in ROOTS:
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(files):
                seen += 1
                label = EXTENSIONS.get(os.path.splitext(name)[1].lower())
                path = Path(folder, name)
                if label and len(found.setdefault(label, [])) < limit_per_type and path.is_file():
                    try:
                        if path.stat().st_size >= 64:
                            found[label].append(path)
                    except OSError:
                        pass
            if seen > budget:
                return found
    return found


def magika_features(head: bytes, tail: bytes, beg: int = 1024, end: int = 1024, pad: int = 256) -> np.ndarray:
    """magika's v2 features (its ``_extract_features_from_seekable``): the first block read
    left-stripped and the last one right-stripped, ``beg``/``end`` bytes of them, padded."""
    head, tail = head.lstrip()[:beg], tail.rstrip()
    tail = tail[len(tail) - end :] if len(tail) > end else tail
    return np.array(list(head) + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + list(tail), np.int32)


def file_samples(labels_space: list[str], split: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features [n, 2048] int32 of the machine's files whose type magika knows, with the label
    indices; ``split`` 0/1 picks one half of the files (by a hash of the path: calib vs eval)."""
    index = {label: i for i, label in enumerate(labels_space)}
    rows, labels, names = [], [], []
    for label, paths in sorted(machine_files().items()):
        if label not in index:
            continue
        for path in paths:
            if zlib.crc32(str(path).encode()) % 2 != split:
                continue
            try:
                with open(path, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    head = handle.read(4096)
                    handle.seek(max(0, size - 4096))
                    tail = handle.read()
            except OSError:
                continue
            rows.append(magika_features(head, tail))
            labels.append(index[label])
            names.append(str(path))
    return np.stack(rows), np.array(labels, np.int64), names


# -- audio ----------------------------------------------------------------------------------


def speech(seconds: float, seed: int, rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """Audio [samples] float32 and the per-sample truth (1 = voiced). espeak-ng speech when the
    binary exists, else synthesized voiced bursts: a glottal-like harmonic series at 90-220 Hz
    shaped by two moving formants, syllable envelopes, pauses of noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    audio = rng.normal(0, 0.003, n).astype(np.float32)
    truth = np.zeros(n, np.int8)
    position = int(rate * 0.3)
    while position < n - rate // 2:
        length = int(rate * rng.uniform(0.4, 1.2))
        burst = _espeak(rng, rate) if shutil.which("espeak-ng") else _voiced(rng, length, rate)
        burst = burst[: n - position]
        audio[position : position + len(burst)] += burst
        truth[position : position + len(burst)] = 1
        position += len(burst) + int(rate * rng.uniform(0.3, 0.9))
    return audio, truth


def _voiced(rng: np.random.Generator, length: int, rate: int) -> np.ndarray:
    t = np.arange(length) / rate
    pitch = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    f1 = rng.uniform(300, 800) + 200 * np.sin(2 * np.pi * rng.uniform(3, 6) * t)
    f2 = rng.uniform(900, 2200) + 300 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    wave_ = np.zeros(length)
    for k in range(1, 30):
        freq = k * pitch
        gain = np.exp(-((freq - f1) / 150) ** 2) + 0.6 * np.exp(-((freq - f2) / 250) ** 2) + 0.05 / k
        wave_ += gain * np.sin(k * phase)
    syllables = np.abs(np.sin(np.pi * t * rng.uniform(3, 6))) ** 0.7
    wave_ *= syllables * np.minimum(1, np.minimum(t, t[::-1]) * 20)
    return (0.3 * wave_ / (np.abs(wave_).max() + 1e-9)).astype(np.float32)


def _espeak(rng: np.random.Generator, rate: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "s.wav")
        text = " ".join(rng.choice(["hello", "world", "model", "speech", "compress", "signal", "seven"], 3))
        subprocess.run(["espeak-ng", "-w", str(out), text], check=True, capture_output=True)
        with wave.open(str(out)) as w:
            raw = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
            source_rate = w.getframerate()
    positions = np.arange(0, len(raw) - 1, source_rate / rate)
    return np.interp(positions, np.arange(len(raw)), raw).astype(np.float32)
