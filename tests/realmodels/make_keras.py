"""Make the tf2onnx export of the corpus. TensorFlow stays out of the project's environment:

    python3 -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu tf2onnx scikit-learn
    /tmp/tf/bin/python tests/realmodels/make_keras.py

``tf2onnx/digits_keras.onnx``: a Keras CNN on NHWC input [batch, 8, 8, 1] (tf2onnx inserts
Transposes around the NCHW Convs), BatchNormalization (folded into the Convs by the converter),
a channels-last Flatten feeding a MatMul, opset 13. ``digits_keras.eval.npz``: held-out digits (``x``,
NHWC) and ``labels``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _digits import HERE, digits, save_eval  # noqa: E402


def main() -> None:
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    train_x, train_y, eval_x, eval_y = digits()
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1), name="x"),
        layers.Conv2D(16, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Conv2D(32, 3, strides=2, padding="same"), layers.BatchNormalization(), layers.ReLU(),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dropout(0.2), layers.Dense(10),
    ])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(train_x[..., None], train_y, epochs=30, batch_size=64, verbose=0)
    _, acc = model.evaluate(eval_x[..., None], eval_y, verbose=0)
    out = HERE / "tf2onnx"
    out.mkdir(exist_ok=True)
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="x"),)
    model.output_names = ["logits"]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=str(out / "digits_keras.onnx"))
    save_eval(out / "digits_keras.onnx", x=eval_x[..., None].astype(np.float32), labels=eval_y)
    print(f"keras accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
