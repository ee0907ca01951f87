"""Nothing lost: atomic saves, interrupted runs, inputs never modified; the I/O and ORT session layer.

An interrupted or failed run leaves no output, no half-written file and no temporary file,
and an output that existed before stays as it was (model and data consistent).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner

import corrupt
from onnxprune import io, runtime
from onnxprune.cli import cli
from onnxprune.errors import DataError, ModelLoadError, UsageError
from onnxprune.graphutils import set_initializer
from onnxprune.passes import PASSES

DIGITS = Path(__file__).resolve().parent.parent / "models" / "digits"
FEEDS = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}


def cli_run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture()
def external(tmp_path) -> Path:
    return corrupt.good_model(tmp_path / "in", external=True)


# -- saving -------------------------------------------------------------------------------


def test_save_round_trip_inline_and_external(tmp_path, external):
    model = io.load_model(external)
    expected = runtime.run(external, FEEDS)["y"]
    for name, flag in (("inline.onnx", False), ("ext.onnx", True)):
        saved = io.save_model(model, tmp_path / name, external_data=flag)
        assert (tmp_path / f"{name}.data").exists() == flag
        np.testing.assert_array_equal(runtime.run(saved, FEEDS)["y"], expected)
    assert leftovers(tmp_path) == []


def test_rewritten_external_model_is_saved_with_external_data(tmp_path, external):
    model = io.load_model(external)
    for value in model.graph.initializers.values():  # every weight now in memory
        set_initializer(value, value.const_value.numpy().copy())
    assert not io.has_external_data(model)
    io.save_model(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx.data").exists()


def test_large_tensors_are_aligned_for_memory_mapping(tmp_path):
    model = io.load_model(corrupt.good_model(tmp_path / "in"))
    set_initializer(model.graph.initializers["B"], np.zeros(4, np.float32))
    big = ir.Value(name="big", const_value=ir.tensor(np.ones(600_000, np.float32), name="big"))
    model.graph.register_initializer(big)
    io.save_model(model, tmp_path / "out.onnx", external_data=True)
    proto = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    offsets = {t.name: int(dict((e.key, e.value) for e in t.external_data).get("offset", 0))
               for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert offsets["big"] % io.EXTERNAL_DATA_ALIGNMENT == 0


def test_inline_save_above_the_protobuf_limit_is_refused(tmp_path, monkeypatch):
    model = io.load_model(corrupt.good_model(tmp_path / "in"))
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 100)
    with pytest.raises(UsageError, match="2 GiB limit"):
        io.save_model(model, tmp_path / "out.onnx", external_data=False)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("where", ["writing", "renaming data", "renaming model"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_interrupted_save_leaves_nothing_and_keeps_the_old_output(tmp_path, external, monkeypatch, where, error):
    model = io.load_model(external)
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"old model")
    (out / "m.onnx.data").write_bytes(b"old data")
    real_replace, calls = os.replace, []

    def failing_save(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")
        raise error("interrupted while writing")

    def failing_replace(src, dst):  # the first rename onto the target is interrupted
        target = {"renaming data": "m.onnx.data", "renaming model": "m.onnx"}[where]
        if Path(dst).name == target and Path(dst).parent == out and not calls:
            calls.append(dst)
            raise error("interrupted while renaming")
        real_replace(src, dst)

    if where == "writing":
        monkeypatch.setattr(io.ir, "save", failing_save)
    else:
        monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises((KeyboardInterrupt, UsageError)):
        io.save_model(model, out / "m.onnx", external_data=True)
    assert (out / "m.onnx").read_bytes() == b"old model"
    assert (out / "m.onnx.data").read_bytes() == b"old data"
    assert leftovers(out) == []


def test_no_space_left_is_a_clear_error(tmp_path, external, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.ir, "save", full)
    with pytest.raises(UsageError, match="no space left"):
        io.save_model(io.load_model(external), tmp_path / "o.onnx", external_data=True)
    assert list(tmp_path.glob("o.onnx*")) == [] and leftovers(tmp_path) == []


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    with pytest.raises(KeyboardInterrupt), io.atomic_write(tmp_path / "r.json") as handle:
        handle.write("{half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with io.atomic_write(tmp_path / "r.json") as handle:
        handle.write("{}")
    assert (tmp_path / "r.json").read_text() == "{}" and leftovers(tmp_path) == []


@pytest.mark.parametrize("error, code, text", [(KeyboardInterrupt, 130, "interrupted"),
                                               (RuntimeError, 3, "pass 'fold-batchnorm' crashed")])
def test_a_pass_failing_midway_writes_nothing(tmp_path, external, monkeypatch, error, code, text):
    def boom(self, model):
        raise error("boom")

    monkeypatch.setattr(PASSES["fold-batchnorm"], "call", boom)
    out = tmp_path / "out"
    out.mkdir()
    result = cli_run("optimize", external, "-o", out / "o.onnx", "--report", out / "r.json")
    assert result.exit_code == code and text in result.stderr, result.output
    assert list(out.iterdir()) == []


# -- inputs are never modified ------------------------------------------------------------

COMMANDS = [
    ("inspect",),
    ("optimize", "-o", "{out}/o.onnx", "--verify"),
    ("prune", "-o", "{out}/p.onnx", "--ratio", "0.5", "--round-to", "1", "--latency-runs", "0"),
    ("quantize", "-o", "{out}/q.onnx", "--synthetic", "--samples", "4", "--no-latency"),
    ("check", "{other}", "--samples", "2"),
]


@pytest.mark.parametrize("layout", ["inline", "external"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_commands_never_modify_their_input(tmp_path, layout, command):
    folder = tmp_path / "in"
    if layout == "inline" and (DIGITS / "digits.onnx").exists():
        folder.mkdir()
        model = folder / "model.onnx"
        shutil.copy(DIGITS / "digits.onnx", model)
    else:
        model = corrupt.good_model(folder, external=layout == "external")
    out = tmp_path / "out"
    out.mkdir()
    before = digest(folder)
    args = [a.format(out=out, other=model) for a in command[1:]]
    result = cli_run(command[0], model, *args)
    assert result.exit_code == 0, result.output
    assert digest(folder) == before
    assert leftovers(out) == [] and leftovers(folder) == []


# -- loading ------------------------------------------------------------------------------


def test_model_file_over_two_gib_is_refused_before_parsing(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as handle:
        handle.truncate(2**31 + 10)  # sparse: costs no disk
    with pytest.raises(ModelLoadError, match="2 GiB limit"):
        io.load_model(path)


def test_output_path_checks(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        io.check_output_path(tmp_path / "nowhere" / "o.onnx")
    with pytest.raises(UsageError, match="is a folder"):
        io.check_output_path(tmp_path)
    with pytest.raises(UsageError, match="refusing to overwrite"):
        io.check_output_path(tmp_path / "m.onnx", tmp_path / "m.onnx")


def test_release_mappings_unmaps_and_data_comes_back(external):
    model = io.load_model(external)
    tensor = model.graph.initializers["W"].const_value
    first = tensor.numpy().copy()
    assert tensor.raw is not None
    io.release_mappings(model)
    assert tensor.raw is None
    np.testing.assert_array_equal(tensor.numpy(), first)


# -- ONNX Runtime sessions ----------------------------------------------------------------


def test_session_reads_external_data_in_place(external, monkeypatch):
    """An in-memory model with external data goes to ORT as bytes (no temporary copy)."""
    model = io.load_model(external)

    def no_temp(*args, **kwargs):
        raise AssertionError("the weights were copied to a temporary file")

    monkeypatch.setattr(runtime.tempfile, "mkdtemp", no_temp)
    np.testing.assert_array_equal(runtime.run(model, FEEDS)["y"], runtime.run(external, FEEDS)["y"])


def test_session_of_a_large_in_memory_model_goes_through_a_temporary_file(tmp_path, external, monkeypatch):
    model = io.load_model(external)
    for value in model.graph.initializers.values():
        set_initializer(value, value.const_value.numpy().copy())
    monkeypatch.setattr(runtime, "SESSION_BYTES_LIMIT", 0)
    monkeypatch.setattr(runtime.tempfile, "tempdir", str(tmp_path))
    np.testing.assert_array_equal(runtime.run(model, FEEDS)["y"], runtime.run(external, FEEDS)["y"])
    assert [p for p in tmp_path.iterdir() if p.name.startswith("onnxprune-session")] == []


def test_random_inputs_refuse_absurd_shapes(tmp_path):
    path = corrupt.good_model(tmp_path)
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 10**8
    onnx.save(proto, str(path))
    with pytest.raises(DataError, match="GiB of random data"):
        runtime.random_inputs(io.load_model(path))


def test_runtime_errors_are_project_errors(external):
    with pytest.raises(DataError):
        runtime.run(external, {"x": np.zeros((1, 5, 8, 8), np.float32)})


def test_sigterm_during_a_run_cleans_up_like_ctrl_c(tmp_path, external):
    """`kill` (or a CI timeout) mid-run: exit 130, no output, no temporary folder left."""
    import signal
    import subprocess
    import sys

    child = (
        "import sys, time\n"
        "from onnxprune.passes import PASSES\n"
        "def slow(self, model):\n"
        "    sys.stderr.write('busy\\n'); sys.stderr.flush(); time.sleep(60)\n"
        "PASSES['fold-batchnorm'].call = slow\n"
        "from onnxprune.cli import main\n"
        "sys.argv = ['onnxprune', *sys.argv[1:]]\n"
        "main()\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", child, "-q", "optimize", str(external), "-o", str(out / "o.onnx")],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline().strip() == "busy"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert "nothing was written" in proc.stderr.read()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", [
    ("optimize", "-o", "{out}/o.onnx", "--report", "{model}"),
    ("prune", "-o", "{out}/p.onnx", "--ratio", "0.5", "--latency-runs", "0", "--report", "{model}"),
    ("quantize", "-o", "{out}/q.onnx", "--synthetic", "--no-latency", "--report", "{model}"),
    ("quantize", "-o", "{out}/q.onnx", "--synthetic", "--no-latency", "--save-table", "{model}"),
    ("check", "{model}", "--json", "{model}"),
], ids=lambda c: f"{c[0]}-{c[-2]}")
def test_reports_are_never_written_over_the_input(tmp_path, command):
    model = corrupt.good_model(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    before = digest(model.parent)
    result = cli_run(command[0], model, *(a.format(out=out, model=model) for a in command[1:]))
    assert result.exit_code == 2 and "refusing to overwrite the input" in result.stderr, result.output
    assert digest(model.parent) == before and list(out.iterdir()) == []


def test_atomic_write_gives_default_permissions(tmp_path):
    from onnxprune.io import atomic_write

    target = tmp_path / "report.json"
    with atomic_write(target) as handle:
        handle.write("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_error_messages_stay_on_one_line_whatever_the_names():
    from onnxprune.errors import InvalidModelError

    message = str(InvalidModelError("input 'a\nb\tc' of node 'é' is produced by no node"))
    assert message == "input 'a\\nb\\tc' of node 'é' is produced by no node"
