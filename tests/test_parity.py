"""The parity checker's Python API on real graphs: the digits CNN (trained and exported
from PyTorch), its exact-optimized, perturbed and int8 versions, and a hand-pruned net."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import onnxprune
from onnxprune.errors import DataError, ParityError, UsageError
from onnxprune.parity import SCHEMA_VERSION, Tolerances, check
from onnxprune.parity.providers import plan_comparisons, select_providers
from onnxprune.passes.prune.channel_map import CHANNEL_MAP_KEY, record_channel_map
from test_parity_helpers import (
    DIGITS,
    DIGITS_EVAL,
    PERTURBED_NODE,
    conv_net,
    conv_net_data,
    digits_eval,
    perturbed_digits,
    quantized_digits,
)

CUDA = "CUDAExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    optimized = onnxprune.optimize(DIGITS, tmp / "optimized.onnx").output
    return {
        "perturbed": perturbed_digits(tmp / "perturbed.onnx"),
        "optimized": optimized,
        "int8": quantized_digits(tmp / "int8.onnx"),
        "net": conv_net(tmp / "net.onnx"),
        "pruned": conv_net(tmp / "pruned.onnx", keep=[0, 2, 3, 5, 6, 7]),
        "tmp": tmp,
    }


def test_identical_models_pass_with_zero_error():
    result = check(DIGITS, DIGITS, digits_eval(), labels="labels", providers=["cpu"])
    assert result and result.passed and not result.failures
    out = result.output("logits")
    assert out["max_abs"] == 0 and out["mismatches"] == 0 and out["cosine"] == 1.0
    assert out["sqnr_db"] == float("inf") and result.to_dict()["comparisons"][0]["outputs"]["logits"]["sqnr_db"] is None
    assert out["top1_agreement"] == 1.0 and out["accuracy_drop"] == 0.0
    assert result.tolerances.preset == "exact"


def test_digits_accuracy_and_topk_match_an_independent_computation(models):
    data = digits_eval()
    logits = {}
    for name, path in (("reference", DIGITS), ("candidate", models["int8"])):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits[name] = sess.run(["logits"], {"input": data["input"]})[0]
    ref_top = logits["reference"].argmax(1)
    cand_top3 = np.argsort(-logits["candidate"], axis=1, kind="stable")[:, :3]
    result = check(DIGITS, models["int8"], DIGITS_EVAL, labels="labels", providers=["cpu"], batch_size=50,
                   criteria={"top_k": 3})
    out = result.output("logits")
    assert out["samples"] == len(data["labels"]) == 450
    assert out["accuracy_reference"] == pytest.approx(np.mean(ref_top == data["labels"]))
    assert out["accuracy_reference"] == pytest.approx(447 / 450)  # models/digits/metrics.json
    assert out["accuracy_candidate"] == pytest.approx(np.mean(logits["candidate"].argmax(1) == data["labels"]))
    assert out["top1_agreement"] == pytest.approx(np.mean(ref_top == logits["candidate"].argmax(1)))
    assert out["topk_agreement"] == pytest.approx(np.mean((cand_top3 == ref_top[:, None]).any(1)))


def test_perturbed_weight_fails_and_layerwise_names_its_node(models):
    result = check(DIGITS, models["perturbed"], DIGITS_EVAL, labels="labels", layerwise=True, providers=["cpu"])
    assert not result and result.failures[0].startswith("reference@cpu vs candidate@cpu: output 'logits'")
    with pytest.raises(ParityError, match="parity failed"):
        result.raise_on_failure()
    report = result.layerwise
    first = [t for t in report["tensors"] if t["name"] in report["first_failures"]]
    assert [t["node"] for t in first] == [PERTURBED_NODE]
    upstream = report["tensors"][: report["tensors"].index(first[0])]
    assert upstream and all(t["passed"] and t["max_abs"] == 0 for t in upstream)
    assert "error first exceeds the tolerance at: /block/conv2/Conv_output_0" in str(result)


def test_exact_optimized_model_passes_and_layerwise_follows_folded_batchnorm(models):
    result = check(DIGITS, models["optimized"], DIGITS_EVAL, layerwise=True, providers=["cpu"])
    assert result, result.failures
    report = result.layerwise
    assert report["first_failures"] == []
    names = {t["name"]: t for t in report["tensors"]}
    # BatchNorm is folded away: its output is compared against the Conv the Relu now reads
    assert "/stem/bn/BatchNormalization_output_0" in names
    assert "/stem/conv/Conv_output_0" not in names  # the same name now holds BN's values
    assert all(t["status"] == "compared" and t["passed"] for t in report["tensors"])


def test_int8_candidate_is_judged_by_the_int8_preset_and_matched_through_dequantize(models):
    result = check(DIGITS, models["int8"], DIGITS_EVAL, labels="labels", layerwise=True, providers=["cpu"])
    assert result.tolerances.preset == "int8"  # auto: only the candidate is quantized
    out = result.output("logits")
    assert out["top1_agreement"] > 0.95 and out["cosine"] > 0.99 and out["mismatches"] > 0
    tensors = result.layerwise["tensors"]
    dequantized = [t for t in tensors if t["candidate_tensor"].endswith("_DequantizeLinear_Output")]
    assert len(dequantized) >= 10
    assert all(np.isfinite(t["sqnr_db"]) and t["sqnr_db"] < 80 for t in dequantized)  # real int8 error
    strict = check(DIGITS, models["int8"], DIGITS_EVAL, tolerances="exact", providers=["cpu"])
    assert not strict and "elements outside atol" in strict.failures[0]


def test_pruned_candidate_compares_surviving_channels(models):
    data = conv_net_data()
    kept = [0, 2, 3, 5, 6, 7]
    plain = check(models["net"], models["pruned"], data, layerwise=True, providers=["cpu"])
    status = {t["name"]: t["status"] for t in plain.layerwise["tensors"]}
    assert status["conv1_out"] == "shape-differs" and status["conv2_out"] == "compared"
    assert plain.layerwise["first_failures"] == ["conv2_out"]  # first unpruned tensor downstream
    mapped = check(models["net"], models["pruned"], data, layerwise=True, providers=["cpu"],
                   channel_map={"conv1_out": (1, kept), "relu1_out": (1, kept)})
    rows = {t["name"]: t for t in mapped.layerwise["tensors"]}
    assert rows["conv1_out"]["status"] == "surviving-channels" and rows["conv1_out"]["max_abs"] == 0
    assert rows["relu1_out"]["passed"] and mapped.layerwise["first_failures"] == ["conv2_out"]


def test_channel_map_recorded_in_the_model_metadata(models, tmp_path):
    model = onnxprune.load_model(models["pruned"])
    model.metadata_props[CHANNEL_MAP_KEY] = json.dumps({"conv1_out": {"axis": 1, "removed": [1, 4]}})
    onnxprune.save_model(model, tmp_path / "pruned_map.onnx")
    result = check(models["net"], tmp_path / "pruned_map.onnx", conv_net_data(), layerwise=True, providers=["cpu"])
    rows = {t["name"]: t for t in result.layerwise["tensors"]}
    assert rows["conv1_out"]["status"] == "surviving-channels" and rows["conv1_out"]["max_abs"] == 0
    assert rows["relu1_out"]["status"] == "shape-differs"  # not in the map


def test_real_prune_plan_localises_to_the_consumer_of_pruned_channels(tmp_path):
    from onnxprune.passes.prune.analysis import analyze
    from onnxprune.passes.prune.group import PrunePlan
    from onnxprune.passes.prune.rewrite import apply_plan

    model = onnxprune.load_model(DIGITS)
    groups = analyze(model)
    rng = np.random.default_rng(0)
    plan = PrunePlan({g.id: np.sort(rng.permutation(g.size)[: g.size * 3 // 4]) for g in groups if g.prunable})
    apply_plan(model, groups, plan)
    record_channel_map(model, groups, plan)
    onnxprune.save_model(model, tmp_path / "pruned.onnx")
    result = check(DIGITS, tmp_path / "pruned.onnx", DIGITS_EVAL, layerwise=True, providers=["cpu"], samples=64,
                   tolerances="exact")  # auto would pick the pruned preset: no elementwise check
    rows = {t["name"]: t for t in result.layerwise["tensors"]}
    stem = rows["/stem/relu/Relu_output_0"]  # output channels removed: the survivors are untouched
    assert stem["status"] == "surviving-channels" and stem["max_abs"] == 0
    assert result.layerwise["first_failures"] == ["/block/conv1/Conv_output_0"]  # reads the pruned stem


def test_criteria_override_a_preset(models):
    loose = check(DIGITS, models["perturbed"], DIGITS_EVAL, providers=["cpu"], criteria={"atol": 0.1})
    assert loose, loose.failures
    per_output = check(DIGITS, models["perturbed"], DIGITS_EVAL, providers=["cpu"],
                       criteria={"per_output_atol": {"logits": 0.1}})
    assert per_output
    ranked = check(DIGITS, models["perturbed"], DIGITS_EVAL, labels="labels", providers=["cpu"],
                   tolerances=Tolerances(atol=None, min_top1=1.0, max_accuracy_drop=0.0))
    assert ranked  # the perturbation changes no prediction


def test_result_schema_is_stable(models):
    result = check(models["net"], models["net"], providers=["cpu", "cuda"], layerwise=True)
    data = result.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert list(data) == ["schema_version", "passed", "reference", "candidate", "data", "providers", "tolerances",
                          "comparisons", "failures", "notes", "layerwise", "seconds", "unevaluated",
                          "layerwise_providers", "execution"]
    assert set(data["data"]) == {"source", "samples", "batch_size", "synthetic", "labels"}
    assert data["data"]["synthetic"] and any("random" in n for n in data["notes"])
    assert set(data["providers"]) == {"requested", "used", "unavailable", "options", "placement", "precision"}
    assert data["providers"]["placement"]["CPUExecutionProvider"]["share"] == 1.0
    comparison = data["comparisons"][0]
    assert set(comparison) == {"name", "reference", "candidate", "judged", "passed", "outputs"}
    assert set(comparison["outputs"]["logits"]) == {
        "elements", "samples", "max_abs", "mean_abs", "p50_abs", "p99_abs", "max_rel", "mean_rel", "p99_rel",
        "mean_abs_reference", "cosine", "cosine_min", "sqnr_db", "mismatches", "mismatch_fraction",
        "nonfinite_mismatches", "top1_agreement", "topk_agreement", "top_k", "accuracy_reference",
        "accuracy_candidate", "accuracy_drop", "failures", "passed"}
    assert set(data["layerwise"]) == {"reference_provider", "candidate_provider", "samples", "tensors",
                                      "first_failures", "matched", "unmatched"}
    assert set(data["layerwise"]["tensors"][0]) == {
        "name", "node", "op_type", "candidate_node", "candidate_tensor", "status", "reference_shape",
        "candidate_shape", "passed", "failures", "max_abs", "mean_abs", "max_rel", "cosine", "sqnr_db",
        "mismatches", "mismatch_fraction"}
    if not HAS_CUDA:
        assert data["providers"]["unavailable"][0]["provider"] == CUDA
        assert any("CUDAExecutionProvider skipped" in n for n in data["notes"])


def test_comparison_plan_covers_cross_provider_pairs():
    plan = [(str(r), str(c), judged) for r, c, judged in plan_comparisons(["CPUExecutionProvider", CUDA])]
    assert plan == [
        ("reference@cpu", "candidate@cpu", True),
        ("reference@cuda", "candidate@cuda", True),
        ("reference@cpu", "candidate@cuda", True),
        ("reference@cpu", "reference@cuda", False),
        ("candidate@cpu", "candidate@cuda", False),
    ]


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA: the unavailable-provider path is not reachable")
def test_unavailable_provider_is_reported_or_required():
    used, unavailable = select_providers(["cpu", "cuda"], require=False)
    assert used == ["CPUExecutionProvider"] and unavailable[0]["provider"] == CUDA
    assert select_providers(None, require=True) == (["CPUExecutionProvider"], [])  # default: what exists
    with pytest.raises(UsageError, match="required execution provider CUDAExecutionProvider"):
        select_providers(["cpu", "cuda"], require=True)
    with pytest.raises(UsageError, match="none of the requested"):
        select_providers(["cuda"], require=False)


AZURE = "AzureExecutionProvider"  # in CPU builds too: runs every node on CPU, a stand-in second provider
needs_second_provider = pytest.mark.skipif(AZURE not in ort.get_available_providers(),
                                           reason="no second execution provider in this onnxruntime build")


@needs_second_provider
def test_two_providers_run_all_comparisons_in_one_pass(models):
    result = check(DIGITS, models["int8"], DIGITS_EVAL, labels="labels", providers=["cpu", AZURE])
    assert [c["name"] for c in result.comparisons] == [
        "reference@cpu vs candidate@cpu", f"reference@{AZURE} vs candidate@{AZURE}",
        f"reference@cpu vs candidate@{AZURE}", f"reference@cpu vs reference@{AZURE}",
        f"candidate@cpu vs candidate@{AZURE}"]
    assert [c["judged"] for c in result.comparisons] == [True, True, True, False, False]
    drift = result.output("logits", 3)
    assert drift["max_abs"] == 0 and result.output("logits", 2)["max_abs"] > 0  # same kernels, int8 error
    assert result.providers["used"] == ["CPUExecutionProvider", AZURE] and result


@needs_second_provider
def test_provider_that_falls_back_to_cpu_is_reported(models, monkeypatch):
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: ["CPUExecutionProvider"])
    result = check(models["net"], models["net"], providers=["cpu", AZURE])
    assert [u["provider"] for u in result.providers["unavailable"]] == [AZURE]
    assert any("started the session without it" in n for n in result.notes) and len(result.comparisons) == 1
    with pytest.raises(UsageError, match=f"required execution provider {AZURE} unusable"):
        check(models["net"], models["net"], providers=["cpu", AZURE], require_providers=True)


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA execution provider not available (CPU-only onnxruntime; "
                    "install onnxruntime-gpu on a machine with an NVIDIA GPU)")
def test_cpu_vs_cuda_on_digits(models):
    result = check(DIGITS, models["optimized"], DIGITS_EVAL, labels="labels", providers=["cpu", "cuda"],
                   require_providers=True, criteria={"atol": 1e-3, "rtol": 1e-3})
    names = [c["name"] for c in result.comparisons]
    assert "reference@cpu vs candidate@cuda" in names and result, result.failures


@pytest.mark.parametrize("variant, message", [
    ({"input_name": "image"}, "inputs differ by name: only in the reference \\['input'\\]"),
    ({"height": 9}, "input 'input': reference shape \\[batch, 1, 8, 8\\] vs candidate shape \\[batch, 1, 9, 8\\]"),
    ({"output_name": "scores"}, "outputs differ by name"),
    ({"classes": 3}, "output 'logits': reference shape \\[batch, 4\\] vs candidate shape \\[batch, 3\\]"),
])
def test_incompatible_models_are_named(models, variant, message):
    other = conv_net(models["tmp"] / f"variant_{'_'.join(variant)}.onnx", **variant)
    with pytest.raises(UsageError, match=message):
        check(models["net"], other, providers=["cpu"])


def test_bad_data_and_options_are_clear_errors(models):
    with pytest.raises(DataError, match="input"):
        check(models["net"], models["net"], {"input": np.zeros((4, 1, 9, 8), np.float32)}, providers=["cpu"])
    two = {"image": np.zeros((4, 1, 8, 8), np.float32), "mask": np.zeros((4, 1, 8, 8), np.float32)}
    with pytest.raises(DataError, match="model input 'input' is missing"):
        check(models["net"], models["net"], two, providers=["cpu"])
    with pytest.raises(UsageError, match="unknown execution provider 'gpu0'"):
        check(models["net"], models["net"], providers=["gpu0"])
    with pytest.raises(UsageError, match="name no output"):
        check(models["net"], models["net"], providers=["cpu"], criteria={"per_output_atol": {"logit": 1.0}})
    with pytest.raises(UsageError, match="labels need --data"):
        check(models["net"], models["net"], labels="labels")


def test_verifier_uses_the_checker_statistics():
    model = onnxprune.load_model(DIGITS)
    result = onnxprune.optimize(model, verify=True, feeds=[{"input": digits_eval()["input"][:8]}])
    parity = [r.parity for r in result.pipeline.records]
    assert all(p["max_normalized_error"]["logits"] < 1e-5 for p in parity)
    assert all(p["sqnr_db"]["logits"] is None or p["sqnr_db"]["logits"] > 100 for p in parity)


def test_verifier_names_the_pass_that_breaks_parity():
    from onnxprune.passes.base import Pass, PassResult
    from onnxprune.pipeline import Verifier, run_pipeline

    class Perturb(Pass):
        name = "perturb"

        def call(self, model: ir.Model) -> PassResult:
            value = model.graph.initializers["fc.bias"]
            value.const_value = ir.tensor(value.const_value.numpy() + 0.5, name=value.name)
            return PassResult(model, True, ["bias += 0.5"])

    with pytest.raises(ParityError, match="pass 'perturb' broke parity: output 'logits'"):
        run_pipeline(onnxprune.load_model(DIGITS), [Perturb()], verify=Verifier())


@pytest.mark.parametrize("arch", ["resnet_basic", "shufflenet", "densenet", "efficientnet", "transformer"])
def test_layerwise_on_zoo_models_has_no_false_alarm_and_finds_a_perturbed_conv(zoo, tmp_path, arch):
    path = zoo.export(arch, dynamic_batch=True)
    exact = check(path, onnxprune.optimize(path).model, providers=["cpu"], layerwise=True, samples=4)
    assert exact and exact.layerwise["first_failures"] == [], exact.layerwise["first_failures"]
    assert exact.layerwise["matched"] >= 5
    model = onnxprune.load_model(path)
    node, weight = next((n, v) for n in model.graph for v in n.inputs
                        if v is not None and v.const_value is not None and len(v.shape) >= 2)
    weight.const_value = ir.tensor(weight.const_value.numpy() * 1.5, name=weight.name)
    onnxprune.save_model(model, tmp_path / "perturbed.onnx")
    broken = check(path, tmp_path / "perturbed.onnx", providers=["cpu"], layerwise=True, samples=4)
    first = [t for t in broken.layerwise["tensors"] if t["name"] in broken.layerwise["first_failures"]]
    assert not broken and [t["node"] for t in first] == [node.name]


def test_output_shapes_that_differ_only_at_run_time_are_named(models):
    path = conv_net(models["tmp"] / "three.onnx", classes=3)
    proto = onnx.load(path)
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "classes"  # declared shape now fits
    onnx.save(proto, path)
    with pytest.raises(UsageError, match=r"output 'logits' has shape \[12, 4\] in the reference but \[12, 3\]"):
        check(models["net"], path, conv_net_data(), providers=["cpu"])
