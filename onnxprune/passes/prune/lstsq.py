"""Streamed affine least squares, and the input rows a layer multiplies (im2col for Conv).

A layer that reads pruned channels computes ``y = M x + b`` for every output position, with
``x`` its input *row*: the input features (Gemm, MatMul) or the patch under the kernel
window (Conv: channel-major, then kernel positions, matching ``W.reshape(O, -1)``).
Refitting it on the kept features only is the least-squares problem

    min_{A, c}  Σ_rows ‖y − Aᵀ x_kept − c‖²  +  n λ ‖A‖²,      λ = ridge · tr(Cxx) / n

solved from the centred moments ``Cxx = E[(x − x̄)(x − x̄)ᵀ]``, ``Cxy = E[(x − x̄)(y − ȳ)ᵀ]``:

    (Cxx + λ I) A = Cxy,        c = ȳ − Aᵀ x̄

(the intercept ``c`` is not shrunk: it carries the removed channels' mean contribution).
With ``n`` rows and D inputs, λ is ``ridge · D / n`` times the mean input variance: a prior
worth ``ridge · D`` average rows, which matters when rows are few per input and fades as the
calibration data grows (the fit tends to plain least squares).
Only running sums are kept (:class:`NormalEquations`), O(D² + D·O) memory whatever the
number of samples; sums are taken around the first batch's means, so that centring later
does not cancel digits away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxprune.graphutils import attr

# Reciprocal condition number below which a system is treated as singular (the sliced
# weights are kept): float64 solves lose about log10(1/rcond) of their 16 digits.
MIN_RCOND = 1e-12
# Rows gathered before they are added to the sums.
FLUSH_ROWS = 512


class NormalEquations:
    """Running sums for ``min Σ‖y − Aᵀx − c‖²`` over rows ``x`` (D features), ``y`` (O outputs)."""

    def __init__(self, features: int, outputs: int) -> None:
        self._n = 0  # rows in the sums (pending rows not yet)
        self.x0 = np.zeros(features)
        self.y0 = np.zeros(outputs)
        self.sx, self.sy, self.syy = np.zeros(features), np.zeros(outputs), np.zeros(outputs)
        self.sxx = np.zeros((features, features))
        self.sxy = np.zeros((features, outputs))
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._moments: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        """Rows seen."""
        self.flush()
        return self._n

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows ``x`` [P, D] and the outputs ``y`` [P, O] they gave."""
        if len(x):
            self._pending.append((np.asarray(x), np.asarray(y)))
            self._pending_rows += len(x)
        if self._pending_rows >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        """Add the pending rows to the sums in one rank-P update (D² additions per update:
        per batch of one image they would cost more than the products)."""
        if not self._pending:
            return
        x = np.concatenate([p[0] for p in self._pending]).astype(np.float64)
        y = np.concatenate([p[1] for p in self._pending]).astype(np.float64)
        self._pending, self._pending_rows = [], 0
        if self._n == 0:  # the shift: sums of deviations from it stay small
            self.x0, self.y0 = x.mean(axis=0), y.mean(axis=0)
        x, y = x - self.x0, y - self.y0
        self._moments = None
        self._n += len(x)
        self.sx += x.sum(axis=0)
        self.sy += y.sum(axis=0)
        self.syy += np.einsum("po,po->o", y, y)
        self.sxx += x.T @ x
        self.sxy += x.T @ y

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """x̄, ȳ, Cxx, Cxy and the per-output variance of y (computed once per new data)."""
        self.flush()
        if self._moments is None:
            mx, my = self.sx / self._n, self.sy / self._n
            cxx = self.sxx / self._n - np.outer(mx, mx)
            cxy = self.sxy / self._n - np.outer(mx, my)
            vy = self.syy / self._n - my**2
            self._moments = mx + self.x0, my + self.y0, cxx, cxy, vy
        return self._moments

    def absorb(self, other: NormalEquations) -> None:
        """Add ``other``'s rows to these sums (re-expressed around this shift)."""
        self.flush()
        other.flush()
        if other._n == 0:
            return
        if self._n == 0:
            self.x0, self.y0 = other.x0.copy(), other.y0.copy()
        d, e, n = other.x0 - self.x0, other.y0 - self.y0, other._n
        self.sxx += other.sxx + np.outer(other.sx, d) + np.outer(d, other.sx) + n * np.outer(d, d)
        self.sxy += other.sxy + np.outer(other.sx, e) + np.outer(d, other.sy) + n * np.outer(d, e)
        self.syy += other.syy + 2 * other.sy * e + n * e**2
        self.sx += other.sx + n * d
        self.sy += other.sy + n * e
        self._n += n
        self._moments = None

    def solve_path(
        self, ridges: Sequence[float], prior: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, np.ndarray] | str]:
        """:meth:`solve` for several ridges from one eigendecomposition of ``Cxx`` (each extra
        ridge then costs a matrix product, not a factorisation). With a ``prior`` [D, O] the
        ridge pulls ``A`` towards it rather than towards 0, ``(Cxx + λI) A = Cxy + λ prior``:
        a strong ridge then gives back the sliced weights, not a shrunken layer."""
        features = len(self.sx)
        self.flush()
        if self._n < features + 1:
            return [f"{self._n} rows for {features} inputs"] * len(ridges)
        mx, my, cxx, cxy, _ = self.moments()
        scale = np.trace(cxx) / self._n
        if not scale > 0:
            return ["the kept inputs are constant on the calibration data"] * len(ridges)
        values, vectors = np.linalg.eigh(cxx)
        if values.min() < -1e-9 * values.max():
            return ["the kept inputs' covariance is not positive definite"] * len(ridges)
        projected = vectors.T @ cxy
        pulled = vectors.T @ prior if prior is not None else np.zeros_like(projected)
        out: list[tuple[np.ndarray, np.ndarray] | str] = []
        for ridge in ridges:
            shifted = np.maximum(values, 0) + ridge * scale
            if shifted.min() / shifted.max() < MIN_RCOND:
                out.append("ill-conditioned (kept inputs nearly dependent)")
                continue
            a = vectors @ ((projected + ridge * scale * pulled) / shifted[:, None])
            out.append((a, my - a.T @ mx))
        return out

    def solve(self, ridge: float) -> tuple[np.ndarray, np.ndarray] | str:
        """``(A [D, O], c [O])``, or why the system is not solved (then keep the sliced weights)."""
        features = len(self.sx)
        self.flush()
        if self._n < features + 1:
            return f"{self._n} rows for {features} inputs"
        mx, my, cxx, cxy, _ = self.moments()
        scale = np.trace(cxx) / self._n
        if not scale > 0:
            return "the kept inputs are constant on the calibration data"
        system = cxx + ridge * scale * np.eye(features)
        try:
            factor = np.linalg.cholesky(system)
        except np.linalg.LinAlgError:
            return "the kept inputs' covariance is not positive definite"
        diag = np.diag(factor)
        if (diag.min() / diag.max()) ** 2 < MIN_RCOND:
            return "ill-conditioned (kept inputs nearly dependent)"
        a = np.linalg.solve(system, cxy)  # positive definite: checked by the factorisation
        return a, my - a.T @ mx

    def recentred(self, a: np.ndarray) -> np.ndarray:
        """The best bias for fixed weights ``a``: ``c = ȳ − aᵀ x̄`` (mean compensation)."""
        mx, my = self.moments()[:2]
        bias: np.ndarray = my - a.T @ mx
        return bias

    def error(self, a: np.ndarray, c: np.ndarray) -> float:
        """``‖Y − Ŷ‖ / ‖Y − Ȳ‖`` on the rows seen, for ``Ŷ = aᵀx + c``: the share of the
        output's variation the affine map misses (0: exact; 1: no better than the mean)."""
        mx, my, cxx, cxy, vy = self.moments()
        bias = my - a.T @ mx - c  # mean error
        spread = float(vy.sum() - 2 * np.sum(a * cxy) + np.sum(a * (cxx @ a)))
        total = float(vy.sum())
        return math.sqrt(max(spread + float(bias @ bias), 0.0) / total) if total > 0 else 0.0


def conv_rows(
    node: ir.Node, kernel: tuple[int, ...], x: np.ndarray, out_shape: tuple[int, ...], index: np.ndarray
) -> np.ndarray:
    """im2col at the output positions ``index`` (flat over ``[N, *spatial out]``) of Conv ``node``
    (kernel window ``kernel``): rows [P, C·K] of input ``x`` [N, C, *spatial in], zero where the
    window meets padding."""
    spatial = x.shape[2:]
    strides = tuple(attr(node, "strides") or (1,) * len(spatial))
    dilations = tuple(attr(node, "dilations") or (1,) * len(spatial))
    begin = _pads_begin(node, spatial, out_shape[2:], kernel, strides, dilations)
    pads = [(0, 0), (0, 0)] + [
        (b, max((o - 1) * s + (k - 1) * d + 1 - i - b, 0))
        for b, o, s, k, d, i in zip(begin, out_shape[2:], strides, kernel, dilations, spatial)
    ]
    padded = np.pad(x, pads)
    n, *out = np.unravel_index(index, (x.shape[0], *out_shape[2:]))
    offsets = np.unravel_index(np.arange(math.prod(kernel)), kernel)
    coords = [o[:, None, None] * s + k[None, None, :] * d for o, s, k, d in zip(out, strides, offsets, dilations)]
    channels = np.arange(x.shape[1])[None, :, None]
    where = (n[:, None, None], channels, *coords)
    rows: np.ndarray = padded[where]  # [P, C, K]
    return rows.reshape(len(index), -1)


def _pads_begin(
    node: ir.Node,
    spatial: tuple[int, ...],
    out: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
) -> tuple[int, ...]:
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = attr(node, "pads") or [0] * (2 * len(spatial))
        return tuple(pads[: len(spatial)]) if auto == "NOTSET" else (0,) * len(spatial)
    total = [max((o - 1) * s + (k - 1) * d + 1 - i, 0)
             for o, s, k, d, i in zip(out, strides, kernel, dilations, spatial)]
    return tuple(t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total)
