"""Models and data shared by the parity tests (no tests here).

``conv_net`` is a tiny hand-built classifier (Conv -> Relu -> Conv -> GlobalAveragePool ->
Flatten) whose first conv can be pruned to a subset of channels by hand, so the surviving
channels are known exactly. Real graphs come from ``models/digits`` (trained in PyTorch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.graphutils import set_initializer

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits" / "digits.onnx"
DIGITS_EVAL = ROOT / "models" / "digits" / "eval.npz"
DIGITS_CALIB = ROOT / "models" / "digits" / "calib.npz"
PERTURBED_WEIGHT = "block.conv2.weight"  # read by node /block/conv2/Conv of the digits model
PERTURBED_NODE = "/block/conv2/Conv"


def conv_net(
    path: Path,
    keep: list[int] | None = None,
    *,
    input_name: str = "input",
    output_name: str = "logits",
    height: int = 8,
    classes: int = 4,
) -> Path:
    """Save the tiny conv net; ``keep``: channels of conv1 that survive (pruned candidate)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((classes, 8, 3, 3)).astype(np.float32)
    if keep is not None:
        w1, b1, w2 = w1[keep], b1[keep], w2[:, keep]
    nodes = [
        helper.make_node("Conv", [input_name, "w1", "b1"], ["conv1_out"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Conv", ["relu1_out", "w2"], ["conv2_out"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv2_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], [output_name], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 1, height, 8])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def conv_net_data(n: int = 12, height: int = 8) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(1).standard_normal((n, 1, height, 8)).astype(np.float32)}


def digits_eval() -> dict[str, np.ndarray]:
    with np.load(DIGITS_EVAL) as data:
        return {k: data[k] for k in data.files}


def perturbed_digits(path: Path, delta: float = 0.05) -> Path:
    """The digits model with one weight of one conv changed by ``delta``."""
    model = onnxprune.load_model(DIGITS)
    value = model.graph.initializers[PERTURBED_WEIGHT]
    weight = value.const_value.numpy().copy()
    weight[3, 5, 1, 1] += delta
    set_initializer(value, weight)
    onnxprune.save_model(model, path)
    return path


def quantized_digits(path: Path) -> Path:
    """An int8 QDQ digits model made by ONNX Runtime's quantize_static (64 calibration samples)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    with np.load(DIGITS_CALIB) as data:
        samples = data["input"][:64]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": samples[i : i + 16]} for i in range(0, 64, 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(DIGITS), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return path
