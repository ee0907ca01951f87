"""Make the torch.onnx exports of the corpus: run ``python3 tests/realmodels/make_torch.py``.

- ``torchscript/digits_cnn.onnx``: Conv+BN+ReLU stack with Dropout and a Linear head, exported
  by the TorchScript exporter (``dynamo=False``, opset 13, dynamic batch ``batch``).
- ``dynamo/digits_mlp.onnx`` (+ ``digits_mlp.onnx.data``): LayerNorm/GELU MLP with a residual,
  exported by the dynamo exporter (opset 18, dynamic batch), weights as external data.

Both are trained on the digits task (``_digits.py``) so fidelity is measured on a real metric;
``<name>.eval.npz`` beside each holds held-out images (``x``) and labels (``labels``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _digits import HERE, digits, save_eval  # noqa: E402


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Linear(64, 10))

    def forward(self, x):
        return self.head(self.features(x))


class DigitsMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(64, 64)
        self.block = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
        self.out = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 10))

    def forward(self, x):
        h = self.inp(x.flatten(1))
        return self.out(h + self.block(h))


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, epochs: int = 40) -> nn.Module:
    torch.manual_seed(0)
    x, y = torch.from_numpy(images[:, None]), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(images[:, None])).argmax(1).numpy() == labels).mean())


def main() -> None:
    torch.manual_seed(0)
    train_x, train_y, eval_x, eval_y = digits()
    cnn = train(DigitsCNN(), train_x, train_y)
    mlp = train(DigitsMLP(), train_x, train_y)
    sample = torch.from_numpy(eval_x[:2, None])

    out = HERE / "torchscript"
    out.mkdir(exist_ok=True)
    torch.onnx.export(
        cnn, (sample,), str(out / "digits_cnn.onnx"), dynamo=False, opset_version=13,
        input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    save_eval(out / "digits_cnn.onnx", x=eval_x[:, None], labels=eval_y)

    out = HERE / "dynamo"
    out.mkdir(exist_ok=True)
    program = torch.onnx.export(
        mlp, (sample,), dynamo=True, opset_version=18, input_names=["x"], output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    for stale in out.glob("digits_mlp.onnx*"):
        stale.unlink()
    program.save(str(out / "digits_mlp.onnx"), external_data=True)
    save_eval(out / "digits_mlp.onnx", x=eval_x[:, None], labels=eval_y)
    print(f"accuracy: cnn {accuracy(cnn, eval_x, eval_y):.3f}, mlp {accuracy(mlp, eval_x, eval_y):.3f}")


if __name__ == "__main__":
    main()
