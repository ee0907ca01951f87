"""Make the skl2onnx export of the corpus: run ``python3 tests/realmodels/make_skl.py``.

``skl2onnx/digits_mlp.onnx``: a scikit-learn Pipeline (StandardScaler -> MLPClassifier) as
skl2onnx writes it: ``ai.onnx.ml`` Scaler, MatMul/Add layers, ArgMax + ArrayFeatureExtractor
for the label, ZipMap turning probabilities into a sequence of maps (a non-tensor output).
``digits_mlp.eval.npz``: held-out digits flattened to 64 features (``x``) and ``labels``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _digits import HERE, digits, save_eval  # noqa: E402


def main() -> None:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, train_y, eval_x, eval_y = digits()
    train_x, eval_x = train_x.reshape(len(train_x), -1), eval_x.reshape(len(eval_x), -1)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((48, 32), max_iter=300, random_state=0))
    pipe.fit(train_x, train_y)
    out = HERE / "skl2onnx"
    out.mkdir(exist_ok=True)
    for name, options in (("digits_mlp_zipmap", None), ("digits_mlp", {"zipmap": False})):
        onx = to_onnx(pipe, train_x[:1], target_opset={"": 15, "ai.onnx.ml": 3}, options=options)
        onx.graph.input[0].name = "x"
        for node in onx.graph.node:
            node.input[:] = ["x" if i == "X" else i for i in node.input]
        (out / f"{name}.onnx").write_bytes(onx.SerializeToString())
    save_eval(out / "digits_mlp.onnx", x=eval_x.astype(np.float32), labels=eval_y)
    print(f"sklearn accuracy {pipe.score(eval_x, eval_y):.3f}")


if __name__ == "__main__":
    main()
