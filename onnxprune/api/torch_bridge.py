"""PyTorch as an autodiff engine for an ONNX graph that stays ours (the ``distill`` extra).

:func:`to_torch` converts an onnx-ir model with onnx2torch (a maintained ONNX→PyTorch
converter) and records, for every trainable torch tensor, the ONNX initializer it came from
*by name*, with the transform between the two layouts (Gemm's ``transB``/``alpha``/``beta``
become an ``nn.Linear``). :meth:`TorchGraph.write_back` puts trained values into those
initializers: the graph itself is never re-exported, only its weights change.

Trainable: the weights and biases of Conv/ConvTranspose/Gemm/BatchNormalization (the modules
onnx2torch builds) and float initializers of more than one element read by MatMul, Add, Sub,
Mul, Div or PRelu. Not: BatchNorm statistics, scalars (activation constants), integers, and
an initializer the conversion copied into several torch tensors (they would drift apart).

Torch is imported here only, never by ``import onnxprune``; without the extra every entry
point says how to install it (:func:`require`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxprune import runtime
from onnxprune.errors import UsageError

INSTALL = "pip install 'onnxprune[distill]'"
ELEMENTWISE = ("MatMul", "Add", "Sub", "Mul", "Div", "PRelu")


def available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("onnx2torch") is not None


def require(what: str) -> None:
    """Raise a one-line usage error when torch or onnx2torch is missing."""
    if not available():
        raise UsageError(f"{what} needs PyTorch and onnx2torch: {INSTALL}")


def _onnx2torch():
    """Import onnx2torch. It imports torchvision at module level for two converters
    (NonMaxSuppression, RoiAlign) only; where torchvision is absent, or installed but built
    for another torch (its import fails: "operator torchvision::nms does not exist"), those
    two names are given placeholders that fail if such a node is converted, and the rest of
    the converter works."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import onnx2torch

            return onnx2torch
        except Exception:  # a torchvision that does not match the installed torch
            for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "onnx2torch")]:
                del sys.modules[name]
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

    def missing(*args, **kwargs):
        raise NotImplementedError("this operator needs torchvision")

    ops.nms = ops.roi_align = missing
    stub.ops, stub.__path__ = ops, []
    sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
    try:
        import onnx2torch
    finally:
        sys.modules.pop("torchvision", None)
        sys.modules.pop("torchvision.ops", None)
    return onnx2torch


@dataclasses.dataclass
class Binding:
    """One trainable torch tensor and the ONNX initializer it stands for."""

    name: str  # the ONNX initializer
    tensor: object  # torch.nn.Parameter
    transpose: bool = False  # Gemm with transB=0: torch holds Bᵀ
    scale: float = 1.0  # Gemm alpha (weight) or beta (bias): torch holds scale · value

    def onnx_value(self) -> np.ndarray:
        array = self.tensor.detach().cpu().numpy() / self.scale
        return np.ascontiguousarray(array.T if self.transpose else array)


class TorchGraph:
    """An onnx2torch module with its trainable tensors bound to ONNX initializers by name."""

    def __init__(self, module, inputs: list[str], outputs: list[str], bindings: list[Binding], notes: list[str]):
        self.module, self.inputs, self.outputs = module, inputs, outputs
        self.bindings, self.notes = bindings, notes

    def parameters(self) -> list:
        return [b.tensor for b in self.bindings]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> list:
        """The graph's outputs (torch tensors, graph order) for numpy feeds keyed by input name."""
        import torch

        result = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.inputs])
        return list(result) if isinstance(result, (tuple, list)) else [result]

    def state(self) -> list[np.ndarray]:
        return [b.tensor.detach().clone() for b in self.bindings]

    def restore(self, state: list) -> None:
        import torch

        with torch.no_grad():
            for binding, saved in zip(self.bindings, state):
                binding.tensor.copy_(saved)

    def write_back(self, model: ir.Model) -> list[str]:
        """Replace each bound initializer of ``model`` (by name) with the torch values; new
        tensors, not writes into the old ones (a clone sharing them stays as it was)."""
        written = []
        for binding in self.bindings:
            value = model.graph.initializers.get(binding.name)
            if value is None or value.const_value is None:
                raise UsageError(f"initializer '{binding.name}' is not in the model to write back into")
            array = binding.onnx_value().astype(value.const_value.numpy().dtype, copy=False)
            if array.shape != tuple(value.const_value.shape.numpy()):
                raise UsageError(f"initializer '{binding.name}': trained shape {array.shape} does not match "
                                 f"the graph's {tuple(value.const_value.shape.numpy())}")
            value.const_value = ir.Tensor(array, name=binding.name)
            written.append(binding.name)
        return written


def _with_ranks(model: ir.Model, sample: Mapping[str, np.ndarray] | None):
    """The model's proto, with the shapes ONNX shape inference cannot give (Paddle's reshapes)
    measured on ``sample`` for the BatchNormalization inputs: onnx2torch picks BatchNorm1d/2d
    from the input's rank and refuses an unknown one."""
    import onnx

    proto = ir.to_proto(model)
    if sample is None:
        return proto
    inferred = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))
    unknown = [n.inputs[0] for n in inferred.graph if n.op_type == "BatchNormalization"
               and n.inputs[0] is not None and n.inputs[0].shape is None]
    if not unknown:
        return proto
    inferred.graph.outputs.extend(v for v in unknown if v not in list(inferred.graph.outputs))
    measured = runtime.run(inferred, dict(sample))
    names = {v.name for v in unknown if v.name in measured}
    kept = [v for v in proto.graph.value_info if v.name not in names]  # typed but shapeless entries go
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    proto.graph.value_info.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, measured[name].shape) for name in names)
    return proto


def to_torch(model: ir.Model, sample: Mapping[str, np.ndarray] | None = None,
             extra_outputs: Sequence[str] = ()) -> TorchGraph:
    """Convert ``model``; raises :class:`UsageError` with the converter's reason if it cannot.
    ``sample``: feeds of real data, to measure the ranks shape inference leaves open.
    ``extra_outputs``: intermediate tensors the torch module also returns, after the graph's
    outputs (each the only output of a node that produces no graph output: onnx2torch
    returns one result per node)."""
    require("training the weights")
    import onnx
    import torch

    onnx2torch = _onnx2torch()
    proto = _with_ranks(model, sample)
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in extra_outputs)
    try:
        module = onnx2torch.convert(proto, attach_onnx_mapping=True)
    except Exception as error:  # the converter's own reason, e.g. an unsupported operator
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"onnx2torch cannot convert this model: {reason}") from None
    module.eval()  # BatchNorm on its statistics, no dropout: the graph's inference semantics
    initializers = model.graph.initializers
    # onnx2torch makes one module per node, in the order of the proto (ir.to_proto writes
    # the graph's order): the i-th call is the i-th node.
    calls = [n for n in module.graph.nodes if n.op == "call_module"]
    onnx_nodes = list(model.graph)
    if len(calls) != len(onnx_nodes):
        raise UsageError(f"onnx2torch made {len(calls)} modules of {len(onnx_nodes)} nodes: "
                         "cannot tell which weights are which")
    found: dict[str, list[Binding]] = {}
    for fx_node, onnx_node in zip(calls, onnx_nodes):
        sub = module.get_submodule(fx_node.target)
        mapping = getattr(sub, "onnx_mapping", None)
        for binding in _module_bindings(onnx_node, sub, initializers):
            found.setdefault(binding.name, []).append(binding)
        if mapping is None or onnx_node.op_type not in ELEMENTWISE:
            continue
        for arg, name in zip(fx_node.args, mapping.inputs):  # initializers passed as get_attr buffers
            if getattr(arg, "op", None) == "get_attr" and _trainable(initializers.get(name)):
                found.setdefault(name, []).append(Binding(name, _as_parameter(module, arg.target)))
    bindings, notes = [], []
    for name, bound in found.items():
        tensors = {id(b.tensor) for b in bound}
        if len(tensors) > 1:  # copied into several modules: training would split it
            notes.append(f"'{name}' is read by {len(bound)} layers and stays as it is")
            for b in bound:
                b.tensor.requires_grad_(False)
            continue
        bindings.append(bound[0])
    for p in module.parameters():  # only the bound tensors train
        p.requires_grad_(any(p is b.tensor for b in bindings))
    torch.set_grad_enabled(True)
    inputs = [v.name for v in model.graph.inputs if v.name not in initializers]
    outputs = [v.name for v in model.graph.outputs] + list(extra_outputs)
    return TorchGraph(module, inputs, outputs, bindings, notes)


def _trainable(value: ir.Value | None) -> bool:
    tensor = value.const_value if value is not None else None
    return tensor is not None and tensor.dtype == ir.DataType.FLOAT and tensor.size > 1


def _as_parameter(module, target: str):
    """The get_attr buffer ``target`` made a trainable parameter (in place, same name)."""
    import torch

    owner_name, _, attr = target.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    tensor = getattr(owner, attr)
    if isinstance(tensor, torch.nn.Parameter):
        return tensor
    parameter = torch.nn.Parameter(tensor.detach().clone())
    del owner._buffers[attr]
    owner.register_parameter(attr, parameter)
    return parameter


def _module_bindings(node: ir.Node, sub, initializers) -> list[Binding]:
    """The weight and bias onnx2torch copied into ``sub`` for ``node``, with their transforms."""
    import torch

    from onnxprune.graphutils import attr

    names = [v.name if v is not None else None for v in node.inputs]
    if isinstance(sub, torch.nn.Sequential):  # Conv with asymmetric padding: (pad, conv)
        sub = sub[-1]
    pairs: list[tuple[str | None, object, bool, float]] = []
    if node.op_type in ("Conv", "ConvTranspose") and isinstance(sub, torch.nn.modules.conv._ConvNd):
        pairs = [(names[1], sub.weight, False, 1.0), (names[2] if len(names) > 2 else None, sub.bias, False, 1.0)]
    elif node.op_type == "Gemm" and isinstance(sub, torch.nn.Linear):
        transposed = not attr(node, "transB", 0)
        pairs = [(names[1], sub.weight, transposed, float(attr(node, "alpha", 1.0))),
                 (names[2] if len(names) > 2 else None, sub.bias, False, float(attr(node, "beta", 1.0)))]
    elif node.op_type == "BatchNormalization" and isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
        pairs = [(names[1], sub.weight, False, 1.0), (names[2], sub.bias, False, 1.0)]
    return [Binding(name, tensor, transpose, scale) for name, tensor, transpose, scale in pairs
            if name and tensor is not None and _trainable(initializers.get(name)) and scale != 0]
