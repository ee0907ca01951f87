"""Provider options: ``--provider-option openvino:PRECISION=FP32`` (repeatable), a JSON or
TOML file ``{provider: {key: value}}``, and the fp32 hints a parity check uses to tell a
provider's reduced-precision default from a real bug.

Options end up as ONNX Runtime's ``{full provider name: {key: str}}``. For OpenVINO, the
provider's own keys (``precision``, ``device_type``, ``num_of_threads``...) match in any
case, and UPPER_CASE OpenVINO properties (``INFERENCE_PRECISION_HINT=f32``,
``EXECUTION_MODE_HINT=ACCURACY``) are folded into its ``load_config`` JSON for the device.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from onnxprune import providers as eps
from onnxprune.errors import UsageError
from onnxprune.providers import merge_options as merge
from onnxprune.providers import normalise, option_text

OPENVINO = eps.OPENVINO
# Options that make a provider compute in fp32 where its default may be lower (OpenVINO infers
# in bf16 on CPUs with AMX by default; CUDA uses TF32 for Conv/MatMul on Ampere and newer;
# TensorRT only lowers precision when asked, so its hint just turns the flags off).
FP32_HINTS = {
    OPENVINO: {"INFERENCE_PRECISION_HINT": "f32"},
    "CUDAExecutionProvider": {"use_tf32": "0"},
    "TensorrtExecutionProvider": {"trt_fp16_enable": "0", "trt_bf16_enable": "0", "trt_int8_enable": "0"},
}
# Keys whose value asks for a precision, reported next to a provider's drift.
PRECISION_KEYS = {"precision", "inference_precision_hint", "use_tf32", "trt_fp16_enable", "trt_bf16_enable",
                  "execution_mode_hint"}

Options = dict[str, dict[str, str]]
__all__ = ["FP32_HINTS", "fp32_hint", "load_file", "merge", "normalise", "parse_specs", "precision_asked"]


def parse_specs(specs: Iterable[str]) -> Options:
    """``["openvino:PRECISION=FP32", ...]`` -> ``{"OpenVINOExecutionProvider": {"precision": "FP32"}}``."""
    result: Options = {}
    for spec in specs:
        provider, sep, rest = spec.partition(":")
        key, eq, value = rest.partition("=")
        if not sep or not eq or not provider.strip() or not key.strip():
            raise UsageError(f"--provider-option '{spec}': expected PROVIDER:KEY=VALUE, e.g. openvino:PRECISION=FP32")
        full = eps.resolve(provider)
        result.setdefault(full, {})[key.strip()] = value.strip()
    return {p: normalise(p, o) for p, o in result.items()}


def load_file(path: str | Path) -> Options:
    """``{provider: {key: value}}`` from a .json or .toml file (values: strings, numbers,
    booleans, or tables/objects such as OpenVINO's load_config)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read provider options file {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise UsageError(f"{path}: TOML provider options need Python 3.11+; use JSON") from None
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"{path}: expected {{provider: {{key: value}}}}, "
                         f"e.g. {{\"openvino\": {{\"precision\": \"FP32\"}}}}")
    result: Options = {}
    for provider, options in data.items():
        full = eps.resolve(provider)
        result.setdefault(full, {}).update({str(k): option_text(v) for k, v in options.items()})
    return {p: normalise(p, o) for p, o in result.items()}


def fp32_hint(provider: str, options: Mapping[str, str] | None = None) -> dict[str, str] | None:
    """``options`` with the provider's fp32 hint on top, or None when it has none."""
    hint = FP32_HINTS.get(provider)
    if hint is None:
        return None
    return merge({provider: dict(options or {})}, {provider: hint})[provider]


def precision_asked(options: Mapping[str, str] | None) -> dict[str, str]:
    """The precision-related options given (for the report), load_config properties included."""
    found = {k: v for k, v in (options or {}).items() if k.lower() in PRECISION_KEYS}
    if options is not None and "load_config" in options:
        for device, props in json.loads(options["load_config"]).items():
            found.update({f"{device}.{k}": v for k, v in props.items() if k.lower() in PRECISION_KEYS})
    return found
