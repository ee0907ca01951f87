"""Execution providers: names, plugin discovery, options, placement and the cross-provider check.

The OpenVINO tests run the real plugin EP (pip install onnxprune[openvino]); they skip, saying
why, where it is absent or offers no device (its factory serves Intel hardware only).
"""

import json
import os
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxprune import provider_options as po
from onnxprune import providers as eps
from onnxprune import runtime
from onnxprune.cli import cli as main
from onnxprune.errors import UsageError
from onnxprune.parity import check, precision

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits.onnx"
EVAL = ROOT / "models" / "digits" / "eval.npz"
OPENVINO = "OpenVINOExecutionProvider"
AZURE = "AzureExecutionProvider"  # in CPU builds: takes no node, a stand-in for a provider that falls back


def openvino_or_skip():
    if OPENVINO not in eps.available():
        pytest.skip(f"OpenVINO execution provider unusable here: {eps.why_unavailable(OPENVINO)}")


def test_aliases_and_unknown_names():
    assert eps.resolve("openvino") == OPENVINO and eps.resolve("CPU") == "CPUExecutionProvider"
    assert eps.resolve("trt") == eps.resolve("tensorrt") == "TensorrtExecutionProvider"
    assert eps.resolve("CUDAExecutionProvider") == "CUDAExecutionProvider"
    assert eps.short_name(OPENVINO) == "openvino"
    with pytest.raises(UsageError, match="unknown execution provider 'warp'"):
        eps.resolve("warp")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is installed here")
def test_missing_provider_names_the_package():
    with pytest.raises(UsageError, match=r"CUDAExecutionProvider is unavailable: .*pip install onnxprune\[cuda\]"):
        eps.require("cuda")


def test_provider_option_specs_are_normalised():
    options = po.parse_specs(["openvino:PRECISION=FP32", "openvino:INFERENCE_PRECISION_HINT=f32",
                              "cuda:use_tf32=0"])
    assert options[OPENVINO]["precision"] == "FP32"
    assert json.loads(options[OPENVINO]["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}
    assert options["CUDAExecutionProvider"] == {"use_tf32": "0"}
    gpu = po.parse_specs(["openvino:device_type=GPU", "openvino:INFERENCE_PRECISION_HINT=f16"])[OPENVINO]
    assert json.loads(gpu["load_config"]) == {"GPU": {"INFERENCE_PRECISION_HINT": "f16"}}
    for bad in ("openvino", "openvino:PRECISION", ":a=b", "warp:a=b"):
        with pytest.raises(UsageError):
            po.parse_specs([bad])


def test_provider_options_files_and_precedence(tmp_path):
    (tmp_path / "o.json").write_text(json.dumps({"openvino": {"precision": "ACCURACY", "num_of_threads": 2,
                                                              "load_config": {"CPU": {"NUM_STREAMS": "1"}}}}))
    (tmp_path / "o.toml").write_text('[openvino]\nPRECISION = "FP32"\nenable_qdq_optimizer = true\n')
    from_json = po.load_file(tmp_path / "o.json")[OPENVINO]
    assert from_json["precision"] == "ACCURACY" and from_json["num_of_threads"] == "2"
    assert po.load_file(tmp_path / "o.toml")[OPENVINO] == {"precision": "FP32", "enable_qdq_optimizer": "true"}
    merged = po.merge(po.load_file(tmp_path / "o.json"), po.parse_specs(["openvino:INFERENCE_PRECISION_HINT=f32"]))
    expected = {"CPU": {"NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": "f32"}}
    assert json.loads(merged[OPENVINO]["load_config"]) == expected
    hinted = po.fp32_hint(OPENVINO, {"load_config": '{"CPU":{"INFERENCE_PRECISION_HINT":"bf16"}}'})
    assert json.loads(hinted["load_config"]) == {"CPU": {"INFERENCE_PRECISION_HINT": "f32"}}
    assert po.precision_asked(hinted) == {"CPU.INFERENCE_PRECISION_HINT": "f32"}
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected {provider"):
        po.load_file(tmp_path / "bad.json")


def test_plugin_packages_are_found_and_a_broken_one_is_explained(tmp_path, monkeypatch):
    package = tmp_path / "onnxruntime_ep_fake"
    package.mkdir()
    (package / "__init__.py").write_text(
        f"def get_library_path():\n    return {str(tmp_path / 'libfake.so')!r}\n\n"
        "def get_ep_names():\n    return ['FakeExecutionProvider']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(eps, "_plugins", None)
    found = eps.plugins()
    assert "onnxruntime_ep_fake" in found and found["onnxruntime_ep_fake"].error  # no such library
    assert eps.resolve("fakeexecutionprovider") == "FakeExecutionProvider"
    assert "FakeExecutionProvider" not in eps.available()
    assert "onnxruntime_ep_fake plugin could not be registered" in eps.why_unavailable("FakeExecutionProvider")
    assert eps.plugins() is found  # once per process


def test_sessions_take_options_and_record_placement():
    options = ort.SessionOptions()
    chosen = eps.configure(options, ["cpu"], {"cpu": {}})
    assert chosen == [("CPUExecutionProvider", {})]
    assert options.get_session_config_entry("session.record_ep_graph_assignment_info") == "1"
    with runtime.session(DIGITS, ["cpu"]) as sess:
        assert eps.placement(sess) == {"CPUExecutionProvider": 14} and eps.active(sess, "CPUExecutionProvider")


@pytest.mark.skipif(AZURE not in ort.get_available_providers(), reason="no second provider in this onnxruntime")
def test_fallback_share_and_precision_probe_are_reported(monkeypatch):
    monkeypatch.setitem(po.FP32_HINTS, AZURE, {})
    monkeypatch.setattr(precision, "beyond_fp32", lambda drift: True)  # as if Azure lowered precision
    result = check(DIGITS, DIGITS, EVAL, providers=["cpu", AZURE], samples=64)
    assert result.providers["placement"][AZURE]["share"] == 0.0
    assert any(f"{AZURE} ran 0% of the nodes itself" in n for n in result.notes)
    [probe] = result.providers["precision"]
    assert probe["provider"] == AZURE and probe["samples"] == 64 and probe["max_abs"] == 0 and not probe["collapsed"]


def test_check_json_to_stdout_and_bad_provider_option():
    runner = CliRunner()
    done = runner.invoke(main, ["check", str(DIGITS), str(DIGITS), "--data", str(EVAL), "--samples", "32",
                                "--providers", "cpu", "--json", "-"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data["providers"]["used"] == ["CPUExecutionProvider"] and "parity holds" in done.stderr
    bad = runner.invoke(main, ["check", str(DIGITS), str(DIGITS), "--provider-option", "openvino"])
    assert bad.exit_code == 2 and "expected PROVIDER:KEY=VALUE" in bad.output


def test_unusable_openvino_is_a_one_line_error_when_required():
    if OPENVINO in eps.available():
        pytest.skip("OpenVINO is usable here")
    done = CliRunner().invoke(main, ["check", str(DIGITS), str(DIGITS), "--samples", "4",
                                     "--providers", "cpu,openvino", "--require-providers"])
    assert done.exit_code == 2 and len(done.output.strip().splitlines()) == 1
    assert "OpenVINOExecutionProvider unusable" in done.output
    assert ("onnxprune[openvino]" in done.output) or ("offers no device" in done.output)


def test_openvino_against_cpu_on_digits():
    openvino_or_skip()
    result = check(DIGITS, DIGITS, EVAL, providers=["cpu", "openvino"], samples=128,
                   provider_options={"openvino": {"INFERENCE_PRECISION_HINT": "bf16"}}, layerwise=True,
                   layerwise_samples=16)
    names = [c["name"] for c in result.comparisons]
    assert "reference@cpu vs candidate@openvino" in names and "reference@cpu vs reference@openvino" in names
    assert result.providers["placement"][OPENVINO]["share"] > 0.5
    [probe] = result.providers["precision"]
    assert probe["collapsed"] and probe["max_abs"] > 1e-3 > probe["max_abs_fp32"], probe
    assert result.layerwise_providers[OPENVINO]["first_failures"]
    fp32 = check(DIGITS, DIGITS, EVAL, providers=["cpu", "openvino"], samples=128,
                 provider_options={"openvino": {"INFERENCE_PRECISION_HINT": "f32"}},
                 criteria={"atol": 1e-4, "rtol": 1e-3})
    assert fp32 and not fp32.providers["precision"], fp32.failures


@pytest.mark.skipif(os.environ.get("ONNXPRUNE_OPENVINO_REQUIRED") != "1", reason="only where OpenVINO must run")
def test_openvino_is_usable_where_required():
    assert OPENVINO in eps.available(), eps.why_unavailable(OPENVINO)


def test_provider_start_up_error_is_one_line():
    banner = ("*************** EP Error ***************\nEP Error /onnxruntime/core/x.cc:1053 std::shared_ptr<F> "
              "f(const O&) Invalid OpenVINO EP option: INFERENCE_PRECISION_HINT\n"
              " when using [('OpenVINOExecutionProvider', {})]\n"
              "Falling back to ['CPUExecutionProvider'] and retrying.\n")
    assert runtime._ep_error(banner) == "Invalid OpenVINO EP option: INFERENCE_PRECISION_HINT"


def test_quantize_target_provider(tmp_path):
    calib = str(ROOT / "models" / "digits" / "calib.npz")
    if OPENVINO not in eps.available():
        done = CliRunner().invoke(main, ["quantize", str(DIGITS), "-o", str(tmp_path / "q.onnx"), "--calib", calib,
                                         "--target-provider", "openvino"])
        assert done.exit_code == 2 and "OpenVINOExecutionProvider is unavailable" in done.output
        assert not (tmp_path / "q.onnx").exists()
    from onnxprune import quantize

    target = OPENVINO if OPENVINO in eps.available() else AZURE
    if target not in eps.available():
        pytest.skip("no second provider to time on")
    result = quantize(str(DIGITS), calib=calib, latency=True, latency_batch=8, target_provider=target)
    assert result.target_provider == target and result.latency_after_ms > 0
    assert result.to_dict()["target_provider"] == target


def test_minus_one_batch_dim_is_dynamic(tmp_path):
    """Paddle exports write -1 for a dynamic dimension: data, random inputs and check treat it so."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "neg",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 3])])
    path = tmp_path / "neg.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    data = {"x": np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)}
    result = check(path, path, data, providers=["cpu"], batch_size=4)
    assert result and result.output("y")["samples"] == 10
    assert check(path, path, providers=["cpu"])  # random inputs


EXPORTS = sorted((ROOT / "tests" / "realmodels").glob("*/*.onnx"))


@pytest.mark.parametrize("path", EXPORTS or [None], ids=lambda p: "none" if p is None else f"{p.parent.name}/{p.stem}")
def test_openvino_on_committed_exports(path):
    """Every committed real export (torch.onnx, tf2onnx, skl2onnx, Paddle-style) on CPU and
    OpenVINO in one check: fp32 parity with the f32 hint, and where its nodes ran."""
    import numpy as np

    from onnxprune.errors import InvalidModelError

    if path is None:
        pytest.skip("no committed real exports (tests/realmodels) in this checkout")
    openvino_or_skip()
    data = path.with_name(path.stem + ".eval.npz")
    if not data.exists():
        pytest.skip(f"{path.name} has no eval data beside it")
    feeds = {"x": np.load(data)["x"][:32]}
    try:
        result = check(path, path, feeds, providers=["cpu", "openvino"], tolerances="exact",
                       provider_options={"openvino": {"INFERENCE_PRECISION_HINT": "f32"}},
                       criteria={"atol": 1e-3, "rtol": 1e-3})
    except InvalidModelError as exc:
        if "IR version" in str(exc):
            pytest.skip(f"this onnxruntime ({ort.__version__}) cannot read the file: {exc}")
        raise
    assert result, result.failures
    if OPENVINO in result.providers["used"]:
        assert "reference@cpu vs candidate@openvino" in [c["name"] for c in result.comparisons]
        assert 0 < result.providers["placement"][OPENVINO]["share"] <= 1
    else:  # OpenVINO cannot compile some graphs (dynamic rank in skl2onnx's MLP): said, not a crash
        [why] = result.providers["unavailable"]
        assert why["provider"] == OPENVINO and "cannot run this model" in why["reason"] and len(why["reason"]) < 400
