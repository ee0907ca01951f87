"""What the user chooses about quantization, validated once.

Defaults target ONNX Runtime's CPU execution provider: per-channel symmetric int8 weights, and
asymmetric uint8 activations, so that Relu/Clip fold into the quantization range and every
quantized layer fuses into an integer kernel (see ``QuantConfig``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from onnxprune.errors import UsageError

ACTIVATION_TYPES = {"int8": np.int8, "uint8": np.uint8}


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Options of static INT8 QDQ quantization.

    ``activation_type``: 8-bit type of activations. Asymmetric int8 and uint8 give identical
    numbers (the int8 tensor is the uint8 one shifted by 128); they differ in what runtimes
    fuse. ONNX Runtime's x86 CPU EP runs int8 activations only after rewriting each Q→DQ pair
    to uint8, which it skips for a tensor read by several layers (a residual skip): those
    layers and Adds then run in float. Hence uint8 by default; int8 with ``symmetric`` suits
    TensorRT and ARM CPUs.
    ``symmetric``: activations quantized around 0 (zero point 0, or 128 for uint8).
    ``per_channel``: one weight scale per output channel (else one per tensor).
    ``reduce_range``: 7-bit weights, for x86 CPUs without VNNI whose u8*s8 kernels can saturate.
    ``exclude``: node names and op types left in float.
    """

    activation_type: str = "uint8"
    symmetric: bool = False
    per_channel: bool = True
    reduce_range: bool = False
    exclude: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.activation_type not in ACTIVATION_TYPES:
            raise UsageError(
                f"unknown activation type '{self.activation_type}' (choose: {', '.join(ACTIVATION_TYPES)})"
            )
        exclude = [self.exclude] if isinstance(self.exclude, str) else self.exclude  # one name, not its letters
        object.__setattr__(self, "exclude", frozenset(exclude))

    @property
    def activation_dtype(self) -> np.dtype:
        return np.dtype(ACTIVATION_TYPES[self.activation_type])

    @property
    def weight_qmax(self) -> int:
        """Symmetric weight range [-qmax, qmax] (-128 is never used, as ORT's kernels expect)."""
        return 63 if self.reduce_range else 127

    def excludes(self, node_name: str, op_type: str) -> bool:
        return node_name in self.exclude or op_type in self.exclude

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["exclude"] = sorted(self.exclude)
        return data


def check_exclusions(exclude: Iterable[str], node_names: set[str], op_types: set[str]) -> None:
    """An exclusion that names neither a node nor an op type of the model is a typo: say so."""
    unknown = [item for item in exclude if item not in node_names and item not in op_types]
    if unknown:
        raise UsageError(
            f"--exclude: {', '.join(repr(u) for u in unknown)} names no node and no op type of the model"
        )
