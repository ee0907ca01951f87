"""Data as users bring it: image folders say their preprocessing, uint8 casts are announced,
fp16 candidates can be checked, compress on fp16 says what to do (issue 12, items 7 and 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxprune.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits"
MODEL, CALIB, EVAL = DIGITS / "digits.onnx", DIGITS / "calib.npz", DIGITS / "eval.npz"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path_factory.mktemp("digits_png")
    pixels = np.load(EVAL)["input"][:16, 0]  # 0..16 grey levels
    for i, sample in enumerate(pixels):
        image.fromarray(np.uint8(sample * 15)).save(folder / f"{i:02d}.png")
    return folder


def test_image_folders_print_the_preprocessing_everywhere(images):
    default = run("check", MODEL, MODEL, "--data", images, "--providers", "cpu")
    assert default.exit_code == 0, default.output
    assert ("images preprocessed (default, no --preprocess given): gray, resize 8x8, scale 1/255, no mean, "
            "no std, nchw, float32") in default.output
    given = run("prune", MODEL, "--dry-run", "--ratio", "0.3", "--criterion", "activation", "--calib", images,
                "--preprocess", "scale=16/255,mean=0.5,std=0.25")
    assert given.exit_code == 0, given.output
    assert "images preprocessed (--preprocess): gray, resize 8x8, scale 16/255, mean 0.5, std 0.25" in given.output
    quantized = run("quantize", MODEL, "-o", images.parent / "q.onnx", "--calib", images, "--no-latency")
    assert quantized.exit_code == 0 and "images preprocessed (default" in quantized.output, quantized.output


def test_integer_pixels_cast_to_float_are_announced(tmp_path):
    data = np.load(EVAL)
    path = tmp_path / "uint8.npz"
    np.savez(path, input=data["input"][:32].astype(np.uint8), labels=data["labels"][:32])
    result = run("check", MODEL, MODEL, "--data", path, "--providers", "cpu")
    assert result.exit_code == 0, result.output
    assert "holds uint8 values, cast to float32 as they are (no scaling" in result.output


@pytest.fixture(scope="module")
def fp16(tmp_path_factory) -> Path:
    float16 = pytest.importorskip("onnxruntime.transformers.float16")
    path = tmp_path_factory.mktemp("fp16") / "digits.fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(MODEL), keep_io_types=False), path)
    return path


def test_fp32_against_fp16_can_be_checked(fp16):
    result = run("check", MODEL, fp16, "--data", EVAL, "--providers", "cpu", "--atol", "0.05", "--min-top1", "0.99")
    assert result.exit_code == 0, result.output
    assert "reference is FLOAT, candidate is FLOAT16" in result.output
    strict = run("check", MODEL, fp16, "--data", EVAL, "--providers", "cpu")
    assert strict.exit_code == 1, strict.output  # exact preset: fp16 rounding is seen, not hidden


def test_compress_on_fp16_suggests_no_quantize(fp16, tmp_path):
    out = tmp_path / "c.onnx"
    result = run("compress", fp16, "-o", out, "--calib", CALIB, "--latency-batch", "0")
    assert result.exit_code == 2 and "--no-quantize" in result.output and not out.exists(), result.output
    pruned = run("compress", fp16, "-o", out, "--calib", CALIB, "--eval", EVAL, "--ratio", "0.3", "--no-quantize",
                 "--latency-batch", "0")
    assert pruned.exit_code == 0, pruned.output
