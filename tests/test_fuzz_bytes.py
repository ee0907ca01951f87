"""Fuzzing the loader with damaged real model files (bit flips, truncation, garbage).

The property: a damaged file either loads (and then every read-only step works or fails
with a project error) or is refused with ModelLoadError / InvalidModelError; never any
other exception.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corrupt
from onnxprune import api
from onnxprune.errors import InvalidModelError, ModelLoadError, OnnxPruneError
from onnxprune.io import load_model

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits" / "digits.onnx"


@pytest.fixture(scope="module")
def original(zoo) -> bytes:
    path = DIGITS if DIGITS.exists() else zoo.export("resnet_basic")
    return path.read_bytes()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_bytes")


@st.composite
def damage(draw, size: int):
    """A function bytes -> bytes. Positions lean towards the first and last 4 KiB, where the
    protobuf keeps the graph structure (nodes first; inputs, outputs, opsets last); the
    middle is mostly weight bytes, whose damage only changes values."""
    near = st.one_of(st.integers(0, min(4095, size - 1)), st.integers(max(0, size - 4096), size - 1))
    position = st.one_of(near, near, st.integers(0, size - 1))
    kind = draw(st.sampled_from(("flip", "truncate", "insert", "overwrite")))
    if kind == "flip":
        flips = draw(st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=8))

        def apply(data: bytes) -> bytes:
            out = bytearray(data)
            for pos, bit in flips:
                out[pos] ^= 1 << bit
            return bytes(out)
    elif kind == "truncate":
        cut = draw(position)

        def apply(data: bytes) -> bytes:
            return data[:cut]
    else:
        pos, garbage = draw(position), draw(st.binary(min_size=1, max_size=64))

        def apply(data: bytes) -> bytes:
            tail = pos + len(garbage) if kind == "overwrite" else pos
            return data[:pos] + garbage + data[tail:]
    apply.description = kind  # type: ignore[attr-defined]
    return apply


@settings(max_examples=80)
@given(data=st.data())
def test_damaged_model_loads_or_fails_cleanly(original, workdir, data):
    damaged = data.draw(damage(len(original)))(original)
    path = workdir / "damaged.onnx"
    path.write_bytes(damaged)
    try:
        model = load_model(path)
    except (ModelLoadError, InvalidModelError) as exc:
        assert str(exc).startswith(str(path)), f"the message names the file: {exc}"
        assert "\n" not in str(exc)
        return
    del model
    for step in (api.inspect, api.optimize):  # read-only steps on what loaded
        try:
            step(path)
        except OnnxPruneError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=60)
@given(data=st.data())
def test_damaged_model_with_external_data(workdir, data):
    """The .onnx of a model whose weights are in a data file: damage can point the data
    anywhere (locations, offsets, lengths); loading refuses or works, never escapes."""
    folder = workdir / "external"
    if not (folder / "model.onnx.data").exists():
        corrupt.good_model(folder, external=True)
        (folder / "pristine.onnx").write_bytes((folder / "model.onnx").read_bytes())
    original = (folder / "pristine.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data.draw(damage(len(original)))(original))
    try:
        api.optimize(folder / "model.onnx")
    except OnnxPruneError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize("cut", [1, 2, 10, 100, 1000, -1000, -10, -1])
def test_truncated_model_is_refused(original, workdir, cut):
    path = workdir / "truncated.onnx"
    path.write_bytes(original[:cut])
    with pytest.raises(
        (ModelLoadError, InvalidModelError), match="truncated|not a valid ONNX|no graph|corrupted|malformed"
    ):
        load_model(path)
