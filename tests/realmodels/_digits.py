"""The task every committed export is trained on: scikit-learn's 8x8 handwritten digits.

Offline (the data ships inside scikit-learn), ten classes, 1797 images. The first 1297 train,
the last 500 are held out; each export's ``<name>.eval.npz`` holds 200 of them with their labels.
Shared by the ``make_*.py`` scripts (also the one that runs in a TensorFlow venv: numpy and
scikit-learn only here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EVAL_SAMPLES = 200


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, eval images, eval labels); images [N, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    return images[:1297], labels[:1297], images[-EVAL_SAMPLES:], labels[-EVAL_SAMPLES:]


def save_eval(model: Path, **arrays: np.ndarray) -> None:
    """Write ``<model stem>.eval.npz`` beside the model."""
    np.savez_compressed(model.parent / f"{model.stem}.eval.npz", **arrays)
