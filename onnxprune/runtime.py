"""ONNX Runtime sessions and sample inputs.

Sessions are created from serialized bytes when the model is small and from a file with
external data when it is not (protobuf bytes cannot exceed 2 GiB).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxprune.errors import DataError, InvalidModelError, UsageError
from onnxprune.io import EXTERNAL_DATA_THRESHOLD, has_external_data, save_model, weights_nbytes

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def resolve_provider(name: str) -> str:
    """'cpu' -> 'CPUExecutionProvider'; a full provider name is returned as it is."""
    full = PROVIDER_ALIASES.get(name.lower(), name)
    if full not in ort.get_all_providers():
        raise UsageError(
            f"unknown execution provider '{name}' (known: {', '.join(PROVIDER_ALIASES)})"
        )
    return full


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


@contextlib.contextmanager
def session(
    model: ir.Model | str | os.PathLike,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    *,
    intra_op_threads: int | None = None,
    optimization_level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> Iterator[ort.InferenceSession]:
    """An InferenceSession for an in-memory model or a model file."""
    options = ort.SessionOptions()
    options.graph_optimization_level = optimization_level
    options.log_severity_level = 3
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    providers = [resolve_provider(p) for p in providers]
    tmpdir = None
    try:
        if isinstance(model, ir.Model):
            if has_external_data(model) or weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD:
                tmpdir = tempfile.mkdtemp(prefix="onnxprune-session-")
                source: str | bytes = str(save_model(model, Path(tmpdir) / "model.onnx"))
            else:
                source = ir.to_proto(model).SerializeToString()
        else:
            source = str(model)
        try:
            sess = ort.InferenceSession(source, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/etc. types
            name = getattr(model, "graph", None) and model.graph.name or str(model)
            raise InvalidModelError(
                f"ONNX Runtime cannot load model '{name}': {str(exc).splitlines()[0]}"
            ) from None
        yield sess
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def run(
    model: ir.Model | str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    output_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Run the model once and return its outputs by name."""
    with session(model, providers) as sess:
        names = list(output_names) if output_names else [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, dict(feeds))))


def input_specs(model: ir.Model) -> dict[str, tuple[tuple[int | str | None, ...], np.dtype]]:
    """{input name: (shape with symbolic dims as str/None, numpy dtype)}, initializers excluded."""
    specs = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = tuple(
            d if isinstance(d, int) else (d.value if isinstance(d, ir.SymbolicDim) else None)
            for d in (value.shape or ())
        )
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        specs[value.name] = (shape, np.dtype(dtype))
    return specs


def random_inputs(
    model: ir.Model, batch: int = 1, seed: int = 0, dynamic_dim: int = 1
) -> dict[str, np.ndarray]:
    """Random inputs matching the model's input shapes (symbolic dims: batch first, then 1).

    Only good for exact-parity checks; value ranges mean nothing for calibration.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in input_specs(model).items():
        dims = [
            d if isinstance(d, int) else (batch if i == 0 else dynamic_dim)
            for i, d in enumerate(shape)
        ]
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[name] = rng.integers(0, 2, size=dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, size=dims).astype(bool)
        else:
            raise DataError(f"cannot make random data for input '{name}' of type {dtype}")
    return feeds
