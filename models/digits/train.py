"""Train the digits sample model and write digits.onnx, calib.npz, eval.npz and metrics.json.

Data: scikit-learn's bundled handwritten digits (1797 real 8x8 images, no download).
Preprocessing (apply the same to any input): pixel values 0..16 divided by 16 -> float32 in
[0, 1], shaped [N, 1, 8, 8]. Split (stratified, fixed seed): 60 % train, 15 % calibration
(for INT8 quantization), 25 % held-out evaluation.

Run from anywhere: ``python models/digits/train.py`` (under 10 s on one CPU core).
Accuracies in metrics.json are measured with ONNX Runtime on the exported model.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from onnxprune.io import atomic_write
from onnxprune.runtime import session

HERE = Path(__file__).resolve().parent
SEED = 0
EPOCHS = 20
BATCH = 32
LEARNING_RATE = 3e-3
PREPROCESSING = "pixels (0..16) / 16 -> float32 in [0, 1], shape [N, 1, 8, 8]"


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(cout),
            relu=nn.ReLU(),
        )
    )


class ResidualBlock(nn.Module):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + x)


def digits_cnn() -> nn.Sequential:
    """8x8 -> stem 32 -> residual block 32 -> stride-2 conv 64 (4x4) -> conv 64 -> GAP -> 10.

    Named layers give readable ONNX node names (/stem/conv/Conv, /block/Add, /fc/Gemm).
    """
    return nn.Sequential(
        OrderedDict(
            stem=conv_bn_relu(1, 32),
            block=ResidualBlock(32),
            down=conv_bn_relu(32, 64, stride=2),
            conv=conv_bn_relu(64, 64),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(64, 10),
        )
    )


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train / calib / eval splits of the preprocessed digits."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        images, labels, train_size=0.60, stratify=labels, random_state=SEED
    )
    # Of the remaining 40 %: 15/40 calibration, 25/40 held-out evaluation.
    x_calib, x_eval, y_calib, y_eval = train_test_split(
        x_rest, y_rest, train_size=0.375, stratify=y_rest, random_state=SEED
    )
    return {"train": (x_train, y_train), "calib": (x_calib, y_calib), "eval": (x_eval, y_eval)}


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> None:
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    steps = EPOCHS * -(-len(x) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            batch = order[start : start + BATCH]
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
            schedule.step()
    model.eval()


def export_onnx(model: nn.Module) -> bytes:
    """Legacy exporter, BatchNorm unfolded, opset 17, dynamic batch; preprocessing in metadata."""
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter: on purpose
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            buffer,
            dynamo=False,
            do_constant_folding=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    proto.graph.name = "digits_cnn"
    proto.doc_string = "Handwritten digit classifier (sklearn digits, 8x8). Outputs logits."
    onnx.helper.set_model_props(
        proto, {"preprocessing": PREPROCESSING, "labels": "digit 0..9 (argmax of logits)"}
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def onnx_accuracy(model_path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    with session(model_path) as sess:
        logits = sess.run(["logits"], {"input": images})[0]
    return float((logits.argmax(axis=1) == labels).mean())


def main() -> None:
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    splits = load_splits()
    model = digits_cnn()

    started = time.perf_counter()
    train(model, *splits["train"])
    seconds = time.perf_counter() - started

    model_path = HERE / "digits.onnx"
    with atomic_write(model_path, "wb") as handle:
        handle.write(export_onnx(model))
    for split in ("calib", "eval"):
        images, labels = splits[split]
        with atomic_write(HERE / f"{split}.npz", "wb") as handle:
            np.savez_compressed(handle, input=images, labels=labels)

    accuracy = {name: round(onnx_accuracy(model_path, *data), 6) for name, data in splits.items()}
    metrics = {
        "accuracy": accuracy,
        "samples": {name: len(data[1]) for name, data in splits.items()},
        "eval_correct": round(accuracy["eval"] * len(splits["eval"][1])),
        "trainable_parameters": sum(p.numel() for p in model.parameters()),
        "seed": SEED,
        "epochs": EPOCHS,
        "preprocessing": PREPROCESSING,
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "scikit-learn": sklearn.__version__,
        },
    }
    with atomic_write(HERE / "metrics.json") as handle:
        json.dump(metrics, handle, indent=2)
        handle.write("\n")
    print(json.dumps(metrics, indent=2))
    print(f"trained in {seconds:.1f} s on one thread")


if __name__ == "__main__":
    main()
