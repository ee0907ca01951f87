"""From per-tensor statistics to a quantization range: minmax, percentile, entropy, mse.

Each method maps a :class:`TensorStats` (count, min, max, histogram) to ``(low, high)``,
always inside the observed ``[min, max]``.
"""

from __future__ import annotations

import math

import numpy as np

from onnxprune.calibration.histogram import TensorStats
from onnxprune.errors import UsageError

METHODS = ("minmax", "percentile", "entropy", "mse")
HISTOGRAM_METHODS = frozenset({"percentile", "entropy", "mse"})

ENTROPY_BINS = 2048  # TensorRT's reference histogram of |x|
ENTROPY_LEVELS = 128  # 8-bit levels over [0, t] of a signed range (256 for [0, t] asymmetric)


def minmax(stats: TensorStats) -> tuple[float, float]:
    return stats.min, stats.max


def percentile(stats: TensorStats, percent: float = 99.99, symmetric: bool = False) -> tuple[float, float]:
    """Clip ``100 - percent`` % of the values.

    Asymmetric: the (100-p)/2 and 100-(100-p)/2 quantiles of x (half the clipped mass on each
    side). Symmetric: t = the p-th quantile of |x|, range (-t, t). As ONNX Runtime's
    percentile calibrator does, both ends are then clamped to the observed [min, max].
    Quantiles interpolate linearly inside a histogram bin.
    """
    if not 0 < percent <= 100:
        raise UsageError(f"percentile must be in (0, 100] (got {percent})")
    if symmetric:
        counts, w = stats.abs_histogram()
        t = _quantile(counts, 0.0, w, percent / 100)
        low, high = -t, t
    else:
        cut = (100 - percent) / 200
        start = stats.first * stats.width
        low = _quantile(stats.counts, start, stats.width, cut)
        high = _quantile(stats.counts, start, stats.width, 1 - cut)
    return max(float(low), stats.min), min(float(high), stats.max)


def _quantile(counts: np.ndarray, start: float, width: float, q: float) -> float:
    """The q-quantile of a histogram whose bin i covers [start + i*width, start + (i+1)*width)."""
    cumulative = np.cumsum(counts, dtype=np.float64)
    target = q * cumulative[-1]
    i = int(np.searchsorted(cumulative, target, side="left"))
    i = min(i, len(counts) - 1)
    before = cumulative[i - 1] if i else 0.0
    inside = (target - before) / counts[i] if counts[i] else 0.0
    return start + (i + min(max(inside, 0.0), 1.0)) * width


def entropy(stats: TensorStats, symmetric: bool = False, bins: int = ENTROPY_BINS) -> tuple[float, float]:
    """TensorRT's KL-divergence calibration (Migacz, GTC 2017) on the histogram of |x|.

    The |x| histogram is resampled to ``bins`` equal bins h_0..h_{n-1} over [0, max|x|]. For
    each candidate i in [L, n]: P = h_0..h_{i-1} with the outliers sum(h_i..) added to the last
    bin; Q = h_0..h_{i-1} merged into L groups of i // L bins (the last group takes the
    remainder), each group's sum S_g spread evenly over the bins of the group where P is
    non-zero (n_g of them). With N = sum(P) and T = sum(Q) = sum(h_0..h_{i-1}):

        KL(P||Q) = sum_j (p_j/N) log((p_j/N) / (q_j/T))
                 = (1/N) [sum_j p_j log p_j - sum_g P_g log(S_g / n_g)] - log N + log T

    where P_g is P's mass in group g; infinite when some S_g = 0 < P_g. This closed form
    evaluates every candidate from prefix sums (O(n) in all) instead of expanding Q bin by bin.
    The threshold is (m + 0.5) bin widths for the best m; range (-t, t) clamped to [min, max].

    Two details follow NVIDIA's reference implementation (pytorch-quantization / TensorRT
    Model Optimizer, ``_compute_amax_entropy``), and matter for ReLU outputs:

    * L, the quantization levels over [0, t]: 128 for a signed tensor (int8 magnitudes, or
      half of an asymmetric 8-bit range), 256 for a non-negative tensor quantized
      asymmetrically (its range [0, t] holds every uint8 level), 128 when ``symmetric``.
      Candidates start at i = L (each level at least one bin wide): with 256 levels the
      threshold cannot go below max|x| / 8, and a far outlier (the bulk below max|x| / 8)
      keeps the full range: Q's last group, from bin 255 (i // 256) on, is then empty where
      P holds the outliers, for every candidate but i = n.
    * h_0 := h_1 before the search. Half or more of a ReLU output is exact zeros, one spike
      in bin 0, and zero is exact in every candidate range, so it must not steer the choice:
      left in, it makes every Q with groups of two or more bins smear the spike over its
      neighbours, and the search settles on the largest i with one bin per group
      (i = 2L - 1: about 1/8 of max|x|). For |x| of a signed tensor, bins 0 and 1 hold
      about as much anyway.

    Groups with a remainder (ONNX Runtime's and MXNet's choice) rather than NVIDIA's groups of
    i / L bins spread evenly: on the quantize benchmark the even groups clip a global-average-
    pool output by a third (cosine 0.994 vs 1.000 to the float model), these do not.
    """
    absmax = max(abs(stats.min), abs(stats.max))
    if absmax == 0:
        return 0.0, 0.0
    fine, w = stats.abs_histogram()
    # Resample onto `bins` bins over [0, absmax]: cumulative counts at the new edges,
    # interpolated linearly inside the fine bins (which are at least as fine).
    fine_edges = np.arange(len(fine) + 1) * w
    cumulative = np.concatenate([[0.0], np.cumsum(fine, dtype=np.float64)])
    hist = np.diff(np.interp(np.linspace(0.0, absmax, bins + 1), fine_edges, cumulative))
    hist[-1] += cumulative[-1] - hist.sum()  # rounding: keep the total exact
    hist = np.maximum(hist, 0.0)
    hist[0] = hist[1]
    levels = 2 * ENTROPY_LEVELS if stats.min >= 0 and not symmetric else ENTROPY_LEVELS
    m = _best_kl_candidate(hist, levels)
    t = min((m + 0.5) * absmax / bins, absmax)
    return max(-t, stats.min), min(t, stats.max)


def _best_kl_candidate(hist: np.ndarray, levels: int) -> int:
    n = len(hist)
    candidates = np.arange(levels, n + 1)
    c_sum = np.concatenate([[0.0], np.cumsum(hist)])
    c_plogp = np.concatenate([[0.0], np.cumsum(_xlogx(hist))])
    c_nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
    total = c_sum[-1]

    last = candidates - 1  # P's last bin, which also takes the outliers
    outliers = total - c_sum[candidates]
    p_last = hist[last] + outliers
    plogp = c_plogp[last] + _xlogx(p_last)  # sum_j p_j log p_j

    # Groups 0..L-2 hold no outliers (P_g = S_g) and depend on the group size i // L alone:
    # their part of the cross term is computed once per size, O(n) in all instead of O(n L).
    size = candidates // levels
    starts = np.arange(1, n // levels + 1)[:, None] * np.arange(levels)[None, :]
    s_g = c_sum[starts[:, 1:]] - c_sum[starts[:, :-1]]
    n_g = c_nonzero[starts[:, 1:]] - c_nonzero[starts[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_size = np.where(s_g > 0, s_g * np.log(s_g / np.maximum(n_g, 1)), 0.0).sum(axis=1)
        # the last group takes the remainder and the outliers, which may make P's last bin
        # non-zero where h was zero
        first = size * (levels - 1)
        s_end = c_sum[candidates] - c_sum[first]
        n_end = c_nonzero[candidates] - c_nonzero[first] + ((hist[last] == 0) & (p_last > 0))
        p_end = s_end + outliers
        end = np.where(p_end > 0, p_end * np.log(s_end / np.maximum(n_end, 1)), 0.0)
        kl = (plogp - per_size[size - 1] - end) / total - math.log(total) + np.log(c_sum[candidates])
    kl[(s_end == 0) & (p_end > 0)] = np.inf
    return int(candidates[np.argmin(kl)])


def _xlogx(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def mse(stats: TensorStats, symmetric: bool = False, levels: int = 256, rounds: int = 20) -> tuple[float, float]:
    """The range [a, b] (a <= 0 <= b) minimising the expected squared quantization error.

    With step s = (b - a) / (levels - 1), a value x costs s^2/12 (uniform rounding noise)
    inside [a, b] and its clipping error (x - clip(x, a, b))^2 outside (ACIQ's objective,
    Banner et al. 2019). Over the histogram (bin centres c_k, counts n_k):

        E(a, b) = s^2/12 * #{a <= c_k <= b} + sum_{c_k < a} n_k (a - c_k)^2 + sum_{c_k > b} n_k (c_k - b)^2

    Each clipping sum expands to S2 - 2v S1 + v^2 S0 over prefix sums of n, n*c, n*c^2, so a
    candidate costs O(1). Candidates are the histogram's bin edges (and 0). Asymmetric:
    alternate the best b for the current a and the best a for that b until neither moves
    (starting from the full range). Symmetric: the best t for [-t, t] in one pass.
    """
    if stats.max == stats.min:
        return stats.min, stats.max
    used = stats.counts > 0
    centres = (stats.edges()[:-1] + 0.5 * stats.width)[used]
    n = stats.counts[used].astype(np.float64)
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(n * centres**p)]) for p in (0, 1, 2))
    edges = np.append(stats.edges(), 0.0)
    noise = 1.0 / (12.0 * (levels - 1) ** 2)

    def cost(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        i = np.searchsorted(centres, a, side="left")  # bins below a: [0, i)
        j = np.searchsorted(centres, b, side="right")  # bins above b: [j, K)
        below = s2[i] - 2 * a * s1[i] + a**2 * s0[i]
        above = (s2[-1] - s2[j]) - 2 * b * (s1[-1] - s1[j]) + b**2 * (s0[-1] - s0[j])
        return below + above + (b - a) ** 2 * noise * (s0[j] - s0[i])

    if symmetric:
        t = np.unique(np.abs(edges))
        best = t[np.argmin(cost(-t, t))]
        return max(-float(best), stats.min), min(float(best), stats.max)
    lows, highs = np.unique(edges[edges <= 0]), np.unique(edges[edges >= 0])
    a, b = lows[0], highs[-1]
    for _ in range(rounds):
        new_b = highs[np.argmin(cost(np.full_like(highs, a), highs))]
        new_a = lows[np.argmin(cost(lows, np.full_like(lows, new_b)))]
        if (new_a, new_b) == (a, b):
            break
        a, b = new_a, new_b
    return max(float(a), stats.min), min(float(b), stats.max)


def compute_range(stats: TensorStats, method: str, **options) -> tuple[float, float]:
    """Dispatch by method name; ``options`` go to the method (percentile=, symmetric=...)."""
    if method in METHODS and stats.min == stats.max:  # constant tensor: nothing to choose
        return stats.min, stats.max
    if method == "minmax":
        return minmax(stats)
    if method == "percentile":
        return percentile(stats, options.get("percentile", 99.99), options.get("symmetric", False))
    if method == "entropy":
        return entropy(stats, options.get("symmetric", False))
    if method == "mse":
        return mse(stats, options.get("symmetric", False))
    raise UsageError(f"unknown calibration method '{method}' (known: {', '.join(METHODS)})")
