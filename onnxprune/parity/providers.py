"""Execution providers of a check: which ones it uses, their sessions, and the comparisons
between them (discovery, plugins and options live in onnxprune.providers).

With providers ``[cpu, openvino]`` the comparisons are: reference@cpu vs candidate@cpu,
reference@openvino vs candidate@openvino, reference@cpu vs candidate@openvino (all judged),
and, for context, the providers against each other on the same model: reference@cpu vs
reference@openvino and candidate@cpu vs candidate@openvino (drift, never failing the check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxprune import providers as eps
from onnxprune import runtime
from onnxprune.errors import OnnxPruneError, UsageError

DEFAULT_PROVIDERS = ("cpu", "cuda")
short_name = eps.short_name


@dataclasses.dataclass(frozen=True)
class Endpoint:
    model: str  # "reference" or "candidate"
    provider: str  # full ONNX Runtime name

    def __str__(self) -> str:
        return f"{self.model}@{short_name(self.provider)}"


def plan_comparisons(providers: Sequence[str]) -> list[tuple[Endpoint, Endpoint, bool]]:
    """(reference endpoint, candidate endpoint, judged) for the given working providers."""
    plan = [(Endpoint("reference", p), Endpoint("candidate", p), True) for p in providers]
    base = providers[0]
    for other in providers[1:]:
        plan.append((Endpoint("reference", base), Endpoint("candidate", other), True))
        plan.append((Endpoint("reference", base), Endpoint("reference", other), False))
        plan.append((Endpoint("candidate", base), Endpoint("candidate", other), False))
    return plan


def select_providers(requested: Sequence[str] | None, require: bool) -> tuple[list[str], list[dict]]:
    """Resolve names (unknown -> UsageError); split into usable ones and unavailable ones
    (each with the reason and what to install)."""
    names = list(requested) if requested else list(DEFAULT_PROVIDERS)
    wanted = list(dict.fromkeys(eps.resolve(n) for n in names))
    available = set(eps.available())
    used = sorted((p for p in wanted if p in available), key=lambda p: p != eps.CPU)
    unavailable = [{"provider": p, "reason": eps.why_unavailable(p)} for p in wanted if p not in available]
    if requested is None:  # the default asks for what exists, quietly
        unavailable = []
    fail_if_unavailable(unavailable, require)
    if not used:
        raise UsageError("none of the requested execution providers is available: "
                         + "; ".join(f"{u['provider']}: {u['reason']}" for u in unavailable))
    return used, unavailable


def fail_if_unavailable(unavailable: list[dict], required: bool) -> None:
    """With ``required`` (--require-providers), an unusable provider is a usage error."""
    if required and unavailable:
        first = unavailable[0]
        raise UsageError(f"required execution provider {first['provider']} unusable: {first['reason']}")


def run_session(session, feeds: Mapping[str, np.ndarray], endpoint: Endpoint, names: list[str] | None = None) -> dict:
    """{output name: array} of one run; an error (see ``runtime.run_session``) names the endpoint."""
    names = names or [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, runtime.run_session(session, names, _in_session_types(session, feeds))))
    except OnnxPruneError as exc:
        raise type(exc)(f"{endpoint}: {exc}") from None


_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _in_session_types(session, feeds: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Float inputs cast to the session's float type: an fp16 candidate checked against its
    fp32 reference gets the same data in float16."""
    cast = {}
    for spec in session.get_inputs():
        want, given = _FLOATS.get(spec.type), feeds.get(spec.name)
        if want is not None and given is not None and given.dtype.kind == "f" and given.dtype != want:
            cast[spec.name] = given.astype(want)
    return {**feeds, **cast} if cast else feeds


def with_cpu_fallback(provider: str) -> list[str]:
    """``provider`` with the CPU provider behind it for the ops it has no kernel for."""
    return [provider] if provider == eps.CPU else [provider, eps.CPU]


def open_session(stack: contextlib.ExitStack, model: ir.Model, provider: str,
                 provider_options: Mapping[str, Mapping[str, str]] | None):
    return stack.enter_context(runtime.session(model, with_cpu_fallback(provider),
                                               provider_options=_only(provider_options, provider)))


def _only(provider_options, provider: str) -> dict:
    return {provider: dict(provider_options[provider])} if provider_options and provider in provider_options else {}


def open_sessions(stack: contextlib.ExitStack, models: Mapping[str, ir.Model], providers: list[str],
                  provider_options: Mapping[str, Mapping[str, str]] | None = None):
    """({Endpoint: session}, unavailable, {Endpoint: {provider: nodes}}); a provider that ONNX
    Runtime falls back from (CUDA libraries missing, bad options) is dropped as unavailable."""
    sessions, unavailable, placement = {}, [], {}
    if any(p != eps.CPU for p in providers):
        _preload_cuda_libraries()
    for provider in providers:
        try:
            opened = {Endpoint(role, provider): open_session(stack, model, provider, provider_options)
                      for role, model in models.items()}
        except OnnxPruneError as exc:  # it could not start (bad options, libraries) or compile this model
            if provider == eps.CPU:
                raise
            unavailable.append({"provider": provider, "reason": f"it cannot run this model here: {_short(exc)}"})
            continue
        if not all(eps.active(s, provider) for s in opened.values()):
            given = _only(provider_options, provider).get(provider)
            unavailable.append({"provider": provider, "reason": "ONNX Runtime started the session without it and fell "
                                "back to CPU (" + (f"options it rejects? {given}; " if given else "")
                                + "missing libraries, e.g. CUDA/cuDNN?)"})
            continue
        sessions.update(opened)
        placement.update({e: eps.placement(s) for e, s in opened.items()})
    return sessions, unavailable, placement


def _short(exc: Exception, limit: int = 300) -> str:
    """A provider's error on one bounded line: from its own tag (e.g. '[OpenVINO-EP] ...') when
    it has one, else without C++ file names and signatures."""
    text = " ".join(str(exc).split())
    tags = [m.start() for m in re.finditer(r"\[(?:[A-Za-z]+-EP|[A-Za-z]+ EP|ERROR)\]", text)]
    if tags:
        text = text[tags[-1]:]
    else:
        text = re.sub(r"/\S+\.(?:cc|cpp|h|hpp):\d+ \S+\([^)]*\)", "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from pip's nvidia-* wheels (ORT >= 1.21); a no-op
    where the libraries are on the system path, and harmless when they are nowhere."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and "CUDAExecutionProvider" in ort.get_available_providers():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            preload()
