"""Make the Paddle-style graphs of the corpus: run ``python3 tests/realmodels/make_paddle_style.py``.

PaddlePaddle is too heavy for tooling, so the graphs are written with ``onnx.helper`` the way
paddle2onnx writes them: weights in ``Constant`` nodes (no initializers), batch dims as
``dim_value: -1`` and unknown H/W as ``dim_param: '?'``, Conv without bias followed by an
unfolded BatchNormalization, hardswish as HardSigmoid(alpha=1/6, beta=0.5) + Mul (opsets
before 14 have no HardSwish), Linear as MatMul + Add, Resize with an empty ``roi``.
The weights are trained with torch on small tasks, so fidelity is measured on real metrics.

- ``paddle/cls_op11.onnx``: digits classifier, opset 11, softmax output; ``<name>.eval.npz``: ``x``,
  ``labels``.
- ``paddle/seg_op12.onnx``: a text-detector-like segmenter (bright bars on noise -> mask),
  opset 12, input [-1, 3, ?, ?]; ``<name>.eval.npz``: ``x``, ``mask`` (ground truth).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _digits import HERE, digits, save_eval  # noqa: E402


class Graph:
    """Nodes in paddle2onnx's style: every weight a Constant node."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}.tmp_0"

    def const(self, array: np.ndarray, base: str = "param") -> str:
        out = self.name(base)
        value = numpy_helper.from_array(np.asarray(array), out)
        self.nodes.append(helper.make_node("Constant", [], [out], value=value))
        return out

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"p2o.{op_type}.{self.count}", **attrs))
        return out

    def conv_bn(self, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> str:
        w = self.const(conv.weight.detach().numpy(), "conv2d_w")
        y = self.op("Conv", [x, w], kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                    pads=[conv.padding[0]] * 4, dilations=[1, 1], group=1)
        params = [bn.weight, bn.bias, bn.running_mean, bn.running_var]
        names = [self.const(p.detach().numpy().astype(np.float32), "bn") for p in params]
        return self.op("BatchNormalization", [y, *names], epsilon=bn.eps, momentum=0.9)

    def hardswish(self, x: str) -> str:
        return self.op("Mul", [x, self.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)])

    def linear(self, x: str, fc: nn.Linear) -> str:
        y = self.op("MatMul", [x, self.const(fc.weight.detach().numpy().T.copy(), "linear_w")])
        return self.op("Add", [y, self.const(fc.bias.detach().numpy(), "linear_b")])


class Cls(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.f1, self.f2 = nn.Linear(512, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.b2(self.c2(nn.functional.hardswish(self.b1(self.c1(x))))))
        return self.f2(torch.relu(self.f1(x.flatten(1))))


class Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16 + 8, 1, 1)

    def forward(self, x):
        low = nn.functional.hardswish(self.b1(self.c1(x)))
        deep = torch.relu(self.b3(self.c3(torch.relu(self.b2(self.c2(low))))))
        up = nn.functional.interpolate(deep, scale_factor=2.0, mode="nearest")
        return torch.sigmoid(self.head(torch.cat([up, low], 1)))


def bars(n: int, h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images with 1-3 bright horizontal bars ("text lines") and their masks."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.15, (n, 3, h, w)).astype(np.float32)
    mask = np.zeros((n, 1, h, w), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            top, height = rng.integers(0, h - 6), rng.integers(3, 7)
            left = rng.integers(0, w // 2)
            right = rng.integers(left + 6, w)
            mask[i, 0, top : top + height, left:right] = 1
    x += mask * rng.uniform(0.4, 0.7, (n, 3, 1, 1)).astype(np.float32)
    return x, mask


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, loss, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(tx)).split(32):
            opt.zero_grad()
            loss(model(tx[idx]), ty[idx]).backward()
            opt.step()
    return model.eval()


def cls_graph(model: Cls) -> onnx.ModelProto:
    g = Graph()
    x = g.hardswish(g.conv_bn("x", model.c1, model.b1))
    x = g.op("Relu", [g.conv_bn(x, model.c2, model.b2)])
    x = g.op("Reshape", [x, g.const(np.array([0, -1], np.int64), "shape")])
    x = g.linear(g.op("Relu", [g.linear(x, model.f1)]), model.f2)
    out = "save_infer_model/scale_0.tmp_1"
    g.nodes.append(helper.make_node("Softmax", [x], [out], axis=1))
    graph = helper.make_graph(
        g.nodes, "paddle_cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 1, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [-1, 10])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], producer_name="PaddlePaddle")


def seg_graph(model: Seg) -> onnx.ModelProto:
    g = Graph()
    low = g.hardswish(g.conv_bn("x", model.c1, model.b1))
    deep = g.op("Relu", [g.conv_bn(g.op("Relu", [g.conv_bn(low, model.c2, model.b2)]), model.c3, model.b3)])
    roi, scales = g.const(np.zeros(0, np.float32), "roi"), g.const(np.array([1, 1, 2, 2], np.float32), "scale")
    up = g.op("Resize", [deep, roi, scales], mode="nearest", coordinate_transformation_mode="asymmetric",
              nearest_mode="floor")
    y = g.op("Conv", [g.op("Concat", [up, low], axis=1), g.const(model.head.weight.detach().numpy(), "conv2d_w"),
                      g.const(model.head.bias.detach().numpy(), "conv2d_b")], kernel_shape=[1, 1])
    out = "sigmoid_0.tmp_0"
    g.nodes.append(helper.make_node("Sigmoid", [y], [out]))
    graph = helper.make_graph(
        g.nodes, "paddle_seg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [-1, 1, "?", "?"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], producer_name="PaddlePaddle")


def main() -> None:
    torch.manual_seed(0)
    out = HERE / "paddle"
    out.mkdir(exist_ok=True)
    train_x, train_y, eval_x, eval_y = digits()
    cls = fit(Cls(), train_x[:, None], train_y, nn.functional.cross_entropy, 30)
    onnx.save(cls_graph(cls), out / "cls_op11.onnx")
    save_eval(out / "cls_op11.onnx", x=eval_x[:, None], labels=eval_y)

    x, mask = bars(400, 32, 48, seed=0)
    seg = fit(Seg(), x, mask, nn.functional.binary_cross_entropy, 15)
    onnx.save(seg_graph(seg), out / "seg_op12.onnx")
    eval_img, eval_mask = bars(24, 32, 48, seed=1)
    save_eval(out / "seg_op12.onnx", x=eval_img, mask=eval_mask)
    with torch.no_grad():
        pred = seg(torch.from_numpy(eval_img)).numpy() > 0.5
    iou = (pred & (eval_mask > 0)).sum() / (pred | (eval_mask > 0)).sum()
    with torch.no_grad():
        acc = (cls(torch.from_numpy(eval_x[:, None])).argmax(1).numpy() == eval_y).mean()
    print(f"cls accuracy {acc:.3f}, seg mask IoU {iou:.3f}")


if __name__ == "__main__":
    main()
