"""Execution providers: which ones a check uses, their sessions, and the comparisons
between them.

With providers ``[cpu, cuda]`` the comparisons are: reference@cpu vs candidate@cpu,
reference@cuda vs candidate@cuda, reference@cpu vs candidate@cuda (all judged), and
reference@cpu vs reference@cuda (the providers' own drift, for context).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxprune import runtime
from onnxprune.errors import OnnxPruneError, UsageError

DEFAULT_PROVIDERS = ("cpu", "cuda")
_SHORT = {full: short for short, full in runtime.PROVIDER_ALIASES.items()}


def short_name(provider: str) -> str:
    return _SHORT.get(provider, provider)


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
    return plan


def select_providers(requested: Sequence[str] | None, require: bool) -> tuple[list[str], list[dict]]:
    """Resolve names (unknown -> UsageError); split into installed ones and unavailable ones."""
    names = list(requested) if requested else list(DEFAULT_PROVIDERS)
    wanted = list(dict.fromkeys(runtime.resolve_provider(n) for n in names))
    available = set(runtime.available_providers())
    used = sorted((p for p in wanted if p in available), key=lambda p: p != "CPUExecutionProvider")
    unavailable = [
        {"provider": p, "reason": "not available in this onnxruntime build "
         f"({', '.join(sorted(available))}); for CUDA: pip install onnxruntime-gpu"}
        for p in wanted if p not in available
    ]
    if requested is None:  # the default asks for what exists, quietly
        unavailable = []
    fail_if_unavailable(unavailable, require)
    if not used:
        raise UsageError(f"none of the requested execution providers is available: {', '.join(wanted)}")
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
        return dict(zip(names, runtime.run_session(session, names, feeds)))
    except OnnxPruneError as exc:
        raise type(exc)(f"{endpoint}: {exc}") from None


def with_cpu_fallback(provider: str) -> list[str]:
    """``provider`` with the CPU provider behind it for the ops it has no kernel for."""
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def open_sessions(stack: contextlib.ExitStack, models: Mapping[str, ir.Model], providers: list[str]):
    """{Endpoint: session}; a provider ONNX Runtime falls back from (e.g. CUDA libraries
    missing) is dropped and returned as unavailable."""
    sessions, unavailable = {}, []
    if any(p != "CPUExecutionProvider" for p in providers):
        _preload_cuda_libraries()
    for provider in providers:
        opened = {}
        for role, model in models.items():
            sess = stack.enter_context(runtime.session(model, with_cpu_fallback(provider)))
            opened[Endpoint(role, provider)] = sess
        if any(provider not in s.get_providers() for s in opened.values()):
            unavailable.append({"provider": provider, "reason": "ONNX Runtime could not initialise it "
                                "(fell back to CPU; are the CUDA/cuDNN libraries installed?)"})
            continue
        sessions.update(opened)
    return sessions, unavailable


def _preload_cuda_libraries() -> None:
    """Let onnxruntime-gpu find CUDA/cuDNN from pip's nvidia-* wheels (ORT >= 1.21); a no-op
    where the libraries are on the system path, and harmless when they are nowhere."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None and "CUDAExecutionProvider" in runtime.available_providers():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
            preload()
