"""Execution providers in one place: names and aliases, discovery and registration of plugin
EP packages, provider options, and how a session is given its providers.

Two kinds of providers reach ONNX Runtime:

* classic ones, compiled into the onnxruntime wheel (``ort.get_available_providers()``):
  CPU, CUDA/TensorRT in onnxruntime-gpu, OpenVINO in onnxruntime-openvino, DirectML...;
  a session names them in ``providers=[(name, options), ...]``;
* plugin EPs (ONNX Runtime >= 1.23), shipped as their own pip packages, e.g.
  ``onnxruntime-ep-openvino``: a module ``onnxruntime_ep_*`` (or an entry point in the group
  ``onnxprune.execution_providers``) with ``get_library_path()`` and ``get_ep_names()``. Each
  is registered once per process with ``ort.register_execution_provider_library``; the
  devices it offers come from ``ort.get_ep_devices()`` and a session takes them through
  ``SessionOptions.add_provider_for_devices``.

Importing this module loads nothing; discovery runs on the first question about a provider.
Every ONNX Runtime session of onnxprune is configured by :func:`configure` (runtime.session).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Mapping, Sequence

import onnxruntime as ort

from onnxprune.errors import UsageError

CPU = "CPUExecutionProvider"
ALIASES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "tensorrt-rtx": "NvTensorRTRTXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
}
SHORT = {full: short for short, full in ALIASES.items() if short not in ("trt",)}
# What to install for a provider that is missing (the first is what the error names).
PACKAGES = {
    "CUDAExecutionProvider": "onnxprune[cuda] (onnxruntime-gpu, with an NVIDIA GPU)",
    "TensorrtExecutionProvider": "onnxruntime-gpu with TensorRT (and an NVIDIA GPU)",
    "NvTensorRTRTXExecutionProvider": "onnxruntime-ep-nv-tensorrt-rtx (and an NVIDIA RTX GPU)",
    "OpenVINOExecutionProvider": "onnxprune[openvino] (onnxruntime-ep-openvino)",
    "DmlExecutionProvider": "onnxruntime-directml (Windows)",
    "CoreMLExecutionProvider": "onnxruntime on macOS",
    "QNNExecutionProvider": "onnxruntime-qnn (Qualcomm)",
    "WebGpuExecutionProvider": "onnxruntime-ep-webgpu",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx (AMD GPU)",
}
PLUGIN_PREFIX = "onnxruntime_ep_"
ENTRY_POINT_GROUP = "onnxprune.execution_providers"
# A plugin offers devices of these vendors only (its factory filters them): say so when a
# plugin is installed but offers nothing, so "missing" is not mistaken for a bug.
PLUGIN_VENDORS = {"OpenVINOExecutionProvider": "Intel CPUs, GPUs and NPUs"}


@dataclasses.dataclass
class Plugin:
    module: str
    library: str | None
    providers: list[str]
    error: str | None = None  # why it could not be registered


_plugins: dict[str, Plugin] | None = None


def plugins() -> dict[str, Plugin]:
    """{module: Plugin} of every installed plugin EP package, registered (once per process)."""
    global _plugins
    if _plugins is None:
        found = {}
        for name in _plugin_modules():
            found[name] = _register(name)
        _plugins = found
    return _plugins


def _plugin_modules() -> list[str]:
    names = set()
    for folder in sys.path:  # listing only (pkgutil.iter_modules stats every entry: seconds)
        try:
            entries = os.listdir(folder or ".")
        except OSError:
            continue
        names |= {e for e in entries if e.startswith(PLUGIN_PREFIX) and "." not in e}
    try:
        names |= {ep.value.split(":")[0] for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # a broken distribution's metadata must not stop the others
        pass
    return sorted(names)


def _register(module_name: str) -> Plugin:
    try:
        module = importlib.import_module(module_name)
        library = str(module.get_library_path())
        names = list(module.get_ep_names()) if hasattr(module, "get_ep_names") else [module.get_ep_name()]
    except Exception as exc:
        return Plugin(module_name, None, [], f"{type(exc).__name__}: {exc}")
    try:
        ort.register_execution_provider_library(module_name, library)
    except Exception as exc:
        if "already registered" not in str(exc).lower():  # registered by the user: fine
            return Plugin(module_name, library, names, str(exc).splitlines()[0])
    return Plugin(module_name, library, names)


def plugin_of(provider: str) -> Plugin | None:
    return next((p for p in plugins().values() if provider in p.providers), None)


def ep_devices(provider: str) -> list:
    """The OrtEpDevices a plugin provider offers on this machine (registers plugins first)."""
    plugins()
    return [d for d in ort.get_ep_devices() if d.ep_name == provider]


def is_plugin(provider: str) -> bool:
    """True when sessions must take ``provider`` through its devices (not compiled in); only
    then are plugins discovered, so CPU-only work never loads one."""
    return provider not in ort.get_available_providers() and bool(ep_devices(provider))


def short_name(provider: str) -> str:
    return SHORT.get(provider, provider)


def label(provider: str) -> str:
    """How reports name a provider in prose: 'CPU', 'openvino', 'cuda'..."""
    return "CPU" if provider == CPU else short_name(provider)


def known() -> list[str]:
    plugin_names = [n for p in plugins().values() for n in p.providers]
    return list(dict.fromkeys([*ort.get_all_providers(), *plugin_names]))


def resolve(name: str) -> str:
    """'openvino' -> 'OpenVINOExecutionProvider'; a full name is returned as it is; unknown
    names are a UsageError."""
    full = ALIASES.get(name.strip().lower(), name.strip())
    if full in ALIASES.values() or full in ort.get_all_providers():
        return full
    lowered = {k.lower(): k for k in known()}
    if full.lower() in lowered:
        return lowered[full.lower()]
    raise UsageError(f"unknown execution provider '{name}' (known: {', '.join(ALIASES)}, or a full ONNX Runtime name)")


def available() -> list[str]:
    """Providers a session can use here: compiled-in ones and plugins that offer a device."""
    names = list(ort.get_available_providers())
    names += [n for p in plugins().values() for n in p.providers if n not in names and ep_devices(n)]
    return sorted(names, key=lambda p: p != CPU)


def why_unavailable(provider: str) -> str:
    """One line saying why ``provider`` cannot be used here and what to install."""
    plugin = plugin_of(provider)
    if plugin is not None and plugin.error:
        return f"the {plugin.module} plugin could not be registered: {plugin.error}"
    if plugin is not None:
        serves = PLUGIN_VENDORS.get(provider)
        hardware = ", ".join(f"{d.device.type.name} by {d.device.vendor or '?'}"
                             for d in ort.get_ep_devices() if d.ep_name == CPU)
        return (f"the {plugin.module} plugin is installed but offers no device on this machine"
                + (f" (it serves {serves}; this machine has: {hardware})" if serves else ""))
    package = PACKAGES.get(provider)
    hint = f"pip install {package}" if package else "install an onnxruntime build or plugin package with it"
    return f"not in this onnxruntime ({', '.join(available())}): {hint}"


def require(provider: str) -> str:
    """``provider`` resolved, or a UsageError (exit 2) naming what to install."""
    full = resolve(provider)
    if full not in available():
        raise UsageError(f"execution provider {full} is unavailable: {why_unavailable(full)}")
    return full


# -- options: keys as each provider expects them ------------------------------------------

Options = dict[str, dict[str, str]]
OPENVINO = "OpenVINOExecutionProvider"
OPENVINO_KEYS = {
    "device_type", "device_id", "precision", "num_of_threads", "num_streams", "cache_dir", "load_config",
    "enable_opencl_throttling", "enable_qdq_optimizer", "disable_dynamic_shapes", "model_priority",
    "enable_causallm", "reshape_input", "layout", "context", "export_ep_ctx_blob",
}
def option_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def merge_options(*parts: Mapping[str, Mapping[str, str]] | None) -> Options:
    """Later parts win key by key (OpenVINO's load_config is merged per device)."""
    result: Options = {}
    for part in parts:
        for provider, options in (part or {}).items():
            full = resolve(provider)
            current = result.setdefault(full, {})
            for key, value in normalise(full, options).items():
                if key == "load_config" and "load_config" in current:
                    value = _merge_load_config(current["load_config"], value)
                current[key] = value
    return result


def normalise(provider: str, options: Mapping[str, str]) -> dict[str, str]:
    """Keys as the provider expects them (see the module doc); values as strings."""
    options = {str(k): option_text(v) for k, v in options.items()}
    if provider != OPENVINO:
        return options
    result: dict[str, str] = {}
    properties: dict[str, str] = {}
    for key, value in options.items():
        if key.lower() in OPENVINO_KEYS:
            result[key.lower()] = value
        elif key.isupper():
            properties[key] = value
        else:
            result[key] = value
    if properties:
        device = result.get("device_type", "CPU").split(":")[-1].split(".")[0] or "CPU"
        extra = json.dumps({device: properties}, separators=(",", ":"))
        result["load_config"] = _merge_load_config(result["load_config"], extra) if "load_config" in result else extra
    return result


def _merge_load_config(old: str, new: str) -> str:
    try:
        merged, update = json.loads(old), json.loads(new)
    except json.JSONDecodeError as exc:
        raise UsageError(f"OpenVINO load_config is not valid JSON: {exc}") from None
    for device, props in update.items():
        merged.setdefault(device, {}).update(props)
    return json.dumps(merged, separators=(",", ":"))


def _pick_devices(provider: str, wanted: str | None) -> list:
    """The plugin's devices to use: those matching ``wanted`` (a hardware type such as GPU, or
    a metadata value such as OpenVINO's 'GPU.0'), else its CPU device, else its first one."""
    devices = ep_devices(provider)
    if wanted:
        w = wanted.upper()
        chosen = [d for d in devices if d.device.type.name == w
                  or any(str(v).upper() in (w, w.split(":")[-1]) for v in d.ep_metadata.values())]
        if not chosen:
            offered = ", ".join(sorted({d.ep_metadata.get("ov_device") or d.device.type.name for d in devices}))
            raise UsageError(f"{provider} offers no device '{wanted}' here (it offers: {offered})")
        return chosen[:1]
    cpu = [d for d in devices if d.device.type.name == "CPU"]
    return (cpu or devices)[:1]


def configure(options: ort.SessionOptions, providers: Sequence[str],
              provider_options: Mapping[str, Mapping[str, str]] | None = None) -> list | None:
    """Give a session its providers, in priority order; returns the ``providers=`` argument of
    ``ort.InferenceSession`` (None when plugin devices were added to ``options`` instead).

    ONNX Runtime records which provider took each node (see :func:`placement`). A plugin's
    devices are chosen by the ``device`` option (OpenVINO: ``device_type``), else its CPU.
    """
    names = list(dict.fromkeys(resolve(p) for p in providers))
    provider_options = merge_options(provider_options)  # keys as each provider expects them
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if not any(is_plugin(p) for p in names):
        return [(p, provider_options.get(p, {})) for p in names]
    for name in names:
        if not ep_devices(name):
            continue  # unusable here; the caller sees it missing from the session's providers
        opts = dict(provider_options.get(name, {}))
        wanted = opts.pop("device", None) or (opts.pop("device_type", None) if is_plugin(name) else None)
        options.add_provider_for_devices(_pick_devices(name, wanted), opts)
    return None


def placement(session: ort.InferenceSession) -> dict[str, int]:
    """{provider: nodes it runs} of an open session (after ONNX Runtime's graph optimisations);
    empty when this onnxruntime cannot tell."""
    try:
        info = session.get_provider_graph_assignment_info()
    except Exception:
        return {}
    counts: dict[str, int] = {}
    for subgraph in info:
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts


def active(session: ort.InferenceSession, provider: str) -> bool:
    """Did ``provider`` make it into the session (ONNX Runtime drops one it cannot start)?"""
    taken = placement(session)
    return provider in session.get_providers() or taken.get(provider, 0) > 0
