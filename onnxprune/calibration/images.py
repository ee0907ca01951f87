"""Image preprocessing for image-folder datasets.

A :class:`Preprocess` turns one image file into one model sample (no batch axis):

    decode -> colour (RGB / BGR / grey) -> resize -> centre crop -> float array
    -> x * scale -> (x - mean) / std -> layout (CHW for NCHW, HWC for NHWC) -> dtype

It can be written on the command line (``Preprocess.parse``) or in a small JSON/TOML
file (``Preprocess.from_file``), with the same keys either way::

    resize=256,crop=224,scale=1/255,mean=0.485:0.456:0.406,std=0.229:0.224:0.225,layout=nchw,color=rgb

Pillow is an optional dependency (extra ``images``); it is imported only when an image
is actually read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from onnxprune.errors import DataError, UsageError, first_line

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

Size = tuple[int, int]  # (height, width)


def _size(text: str | int | list | tuple | None, key: str) -> int | Size | None:
    """'256' -> 256 (shorter side); '224x320' or [224, 320] -> (224, 320) (height, width)."""
    if text is None or isinstance(text, int):
        return text
    try:
        if isinstance(text, (list, tuple)):
            h, w = (int(v) for v in text)
            return (h, w)
        parts = str(text).lower().split("x")
        if len(parts) == 1:
            return int(parts[0])
        h, w = (int(p) for p in parts)
        return (h, w)
    except ValueError:
        raise UsageError(f"preprocess: {key}={text!r} is not a size (N or HxW)") from None


def _floats(text: str | float | list | tuple | None, key: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        if isinstance(text, (int, float)):
            return (float(text),)
        items = text if isinstance(text, (list, tuple)) else str(text).split(":")
        return tuple(float(Fraction(str(v))) for v in items)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"preprocess: {key}={text!r} is not a ':'-separated list of numbers") from None


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How to turn an image file into a model sample.

    resize: shorter side to N (keeping the aspect ratio), or exactly (height, width).
    crop: centre crop to N x N or (height, width) after resizing.
    scale: multiplier applied first (default 1/255 for float dtypes, 1 for integer dtypes).
    mean, std: per-channel normalisation after scaling, in the output colour order.
    layout: 'nchw' or 'nhwc'; None = take it from the model's input shape.
    color: 'rgb', 'bgr' or 'gray'; None = 'gray' for one-channel models, else 'rgb'.
    dtype: numpy dtype of the sample (default: the model input's dtype, else float32).
    When neither resize nor crop is given, images are resized to the model's input size.
    """

    resize: int | Size | None = None
    crop: int | Size | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    color: str | None = None
    dtype: str | None = None

    def __post_init__(self):
        if self.layout is not None and self.layout.lower() not in ("nchw", "nhwc"):
            raise UsageError(f"preprocess: layout={self.layout!r}; expected nchw or nhwc")
        if self.color is not None and self.color.lower() not in ("rgb", "bgr", "gray"):
            raise UsageError(f"preprocess: color={self.color!r}; expected rgb, bgr or gray")
        if self.std is not None and any(s == 0 for s in self.std):
            raise UsageError("preprocess: std contains 0")
        if self.dtype is not None:
            try:
                np.dtype(self.dtype)
            except TypeError:
                raise UsageError(f"preprocess: dtype={self.dtype!r} is not a numpy dtype") from None

    @classmethod
    def from_dict(cls, values: dict) -> Preprocess:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"preprocess: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        scale = values.get("scale")
        if scale is not None:
            numbers = _floats(scale, "scale")
            if numbers is None or len(numbers) != 1:
                raise UsageError(f"preprocess: scale={values['scale']!r} must be one number")
            scale = numbers[0]
        return cls(
            resize=_size(values.get("resize"), "resize"),
            crop=_size(values.get("crop"), "crop"),
            scale=scale,
            mean=_floats(values.get("mean"), "mean"),
            std=_floats(values.get("std"), "std"),
            layout=values.get("layout"),
            color=values.get("color"),
            dtype=values.get("dtype"),
        )

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """From 'key=value,key=value' (the CLI form) or the path of a .json/.toml file."""
        if os.path.isfile(text) or text.lower().endswith((".json", ".toml")):
            return cls.from_file(text)
        values = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise UsageError(f"preprocess: '{item}' is not key=value")
            values[key.strip().lower()] = value.strip()
        return cls.from_dict(values)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Preprocess:
        """From a JSON or TOML file holding the same keys (optionally under a [preprocess] table)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read preprocess config ({exc.strerror})") from None
        try:
            if path.suffix.lower() == ".toml":
                import tomllib  # Python 3.11+

                values = tomllib.loads(text)
            else:
                values = json.loads(text)
        except ImportError:
            raise UsageError(f"{path}: TOML configs need Python 3.11+; use JSON") from None
        except ValueError as exc:
            kind = path.suffix[1:].upper() or "JSON"
            raise UsageError(f"{path}: not a valid {kind} file ({first_line(exc)})") from None
        if isinstance(values, dict) and isinstance(values.get("preprocess"), dict):
            values = values["preprocess"]
        if not isinstance(values, dict):
            raise UsageError(f"{path}: expected a table of preprocess keys")
        return cls.from_dict(values)

    def describe(self) -> str:
        """One line saying what is done to each image (printed, so a silent default is seen)."""
        def size(value) -> str:
            return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else f"shorter side {value}"

        dtype = np.dtype(self.dtype or "float32")
        scale = self.scale if self.scale is not None else (1 / 255 if dtype.kind == "f" else 1.0)
        steps = [(self.color or "rgb").lower()]
        steps += [f"resize {size(self.resize)}"] if self.resize is not None else []
        steps += [f"crop {size(self.crop)}"] if self.crop is not None else []
        steps.append(f"scale {Fraction(scale).limit_denominator(10000)}")
        steps.append(f"mean {':'.join(f'{m:g}' for m in self.mean)}" if self.mean else "no mean")
        steps.append(f"std {':'.join(f'{s:g}' for s in self.std)}" if self.std else "no std")
        steps += [(self.layout or "nchw").lower(), dtype.name]
        return ", ".join(steps)

    def for_model(self, shape: tuple, dtype: np.dtype | None) -> Preprocess:
        """Fill what was left open (layout, colour, size, dtype) from a model input's shape."""
        layout, color, resize, out_dtype = self.layout, self.color, self.resize, self.dtype
        if len(shape) == 4:
            if layout is None:
                layout = "nhwc" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "nchw"
            channels = shape[1] if layout.lower() == "nchw" else shape[3]
            if color is None:
                color = "gray" if channels == 1 else "rgb"
            hw = shape[2:4] if layout.lower() == "nchw" else shape[1:3]
            if resize is None and self.crop is None and all(isinstance(d, int) for d in hw):
                resize = (int(hw[0]), int(hw[1]))
        if out_dtype is None and dtype is not None:
            out_dtype = np.dtype(dtype).name
        return dataclasses.replace(self, layout=layout, color=color, resize=resize, dtype=out_dtype)

    def __call__(self, path: str | os.PathLike) -> np.ndarray:
        """Read ``path`` and return one sample (CHW or HWC)."""
        image = _open_image(path, "L" if (self.color or "rgb").lower() == "gray" else "RGB")
        image = self._resize(image)
        image = self._crop(image, path)
        array = np.asarray(image, dtype=np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        dtype = np.dtype(self.dtype or "float32")
        scale = self.scale if self.scale is not None else (1 / 255 if dtype.kind == "f" else 1.0)
        array = array * np.float32(scale)
        if (self.color or "rgb").lower() == "bgr":
            array = array[:, :, ::-1]
        if self.mean is not None:
            array = array - np.asarray(self.mean, dtype=np.float32)
        if self.std is not None:
            array = array / np.asarray(self.std, dtype=np.float32)
        if (self.layout or "nchw").lower() == "nchw":
            array = array.transpose(2, 0, 1)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            array = np.clip(np.rint(array), info.min, info.max)
        return np.ascontiguousarray(array.astype(dtype))

    def _resize(self, image):
        from PIL import Image

        if self.resize is None:
            return image
        if isinstance(self.resize, int):
            w, h = image.size
            short = min(w, h)
            size = (max(1, round(w * self.resize / short)), max(1, round(h * self.resize / short)))
        else:
            size = (self.resize[1], self.resize[0])
        return image.resize(size, Image.Resampling.BILINEAR)

    def _crop(self, image, path):
        if self.crop is None:
            return image
        ch, cw = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        w, h = image.size
        if ch > h or cw > w:
            raise DataError(f"{path}: image of {h}x{w} (after resize) is smaller than the crop {ch}x{cw}")
        top, left = (h - ch) // 2, (w - cw) // 2
        return image.crop((left, top, left + cw, top + ch))


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise UsageError(
            "reading images needs Pillow: pip install 'onnxprune[images]' (or pip install pillow)"
        ) from None
    return Image


def _open_image(path: str | os.PathLike, mode: str):
    Image = _pillow()
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: unreadable image ({first_line(exc, with_type=True)})") from None


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES
