"""Streaming statistics and range methods on known distributions (no model involved)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, optimize, stats
from scipy.stats import entropy as kl_divergence

from onnxprune.calibration import calibrators
from onnxprune.calibration.calibrators import _best_kl_candidate, compute_range
from onnxprune.calibration.histogram import TensorStats
from onnxprune.errors import UsageError

N = 400_000


def ideal(ppf, n=N) -> np.ndarray:
    """A deterministic 'perfect' sample: the distribution's quantiles at (i + 0.5) / n."""
    return ppf((np.arange(n) + 0.5) / n).astype(np.float32)


def streamed(x: np.ndarray, pieces: int = 1, bins: int = 8192) -> TensorStats:
    s = TensorStats(bins)
    for chunk in np.array_split(x, pieces):
        s.update(chunk)
    return s


def same(a: TensorStats, b: TensorStats) -> bool:
    return (
        (a.count, a.min, a.max, a.exponent, a.first) == (b.count, b.min, b.max, b.exponent, b.first)
        and np.array_equal(a.counts, b.counts)
    )


GAUSS = ideal(stats.norm.ppf)


# --- streaming histograms --------------------------------------------------------------------


@given(
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-6, 1.0, 300.0]),
    offset=st.sampled_from([0.0, 5.0, -1000.0]),
    cuts=st.lists(st.integers(1, 999), max_size=6),
    bins=st.sampled_from([16, 64, 1024]),
)
def test_streaming_and_merging_equal_one_pass(seed, scale, offset, cuts, bins):
    rng = np.random.default_rng(seed)
    x = (offset + scale * rng.standard_t(2, 1000)).astype(np.float32)  # heavy tails widen the range
    one = streamed(x, bins=bins)
    stream = TensorStats(bins)
    for chunk in np.split(x, sorted(set(cuts))):
        stream.update(chunk)
    assert same(stream, one)
    left, right = streamed(x[:300], 3, bins), streamed(x[300:], 2, bins)
    assert same(left.merge(right), one)
    assert one.counts.sum() == x.size
    assert len(one.counts) <= bins


def test_histogram_resolution_and_memory_are_bounded():
    s = streamed(GAUSS, 40, bins=4096)
    assert 4096 // 2 - 1 <= len(s.counts) <= 4096  # the range spans at least bins/2 - 1 bins
    assert s.width <= (s.max - s.min) / (4096 / 2 - 2)
    s.update(np.float32([1e4]))  # a far outlier coarsens the grid, never grows it
    assert len(s.counts) <= 4096 and s.counts.sum() == GAUSS.size + 1


def test_degenerate_inputs():
    zeros = streamed(np.zeros(10, np.float32))
    assert (zeros.min, zeros.max, zeros.counts.sum()) == (0, 0, 10)
    constant = streamed(np.full(7, 3.5, np.float16))
    assert (constant.min, constant.max) == (3.5, 3.5)
    for method in calibrators.METHODS:
        assert compute_range(constant, method) == (3.5, 3.5)
    dirty = np.array([1.0, np.nan, -2.0, np.inf, 0.5], np.float64)
    s = streamed(dirty)
    assert (s.min, s.max, s.count, s.nonfinite) == (-2.0, 1.0, 3, 2)
    empty = TensorStats()
    empty.update(np.zeros((0, 4), np.float32))
    assert empty.count == 0


# --- methods -------------------------------------------------------------------------------


def test_minmax_is_exact():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    assert compute_range(streamed(x, 5), "minmax") == (float(x.min()), float(x.max()))


def test_percentile_on_uniform():
    s = streamed(ideal(lambda q: q))  # U(0, 1)
    assert compute_range(s, "percentile", percentile=98) == pytest.approx((0.01, 0.99), abs=2e-4)
    symmetric = streamed(ideal(lambda q: 2 * q - 1))  # U(-1, 1)
    low, high = compute_range(symmetric, "percentile", percentile=99, symmetric=True)
    assert (low, high) == pytest.approx((-0.99, 0.99), abs=2e-4)
    assert compute_range(s, "percentile", percentile=100) == pytest.approx((s.min, s.max))
    with pytest.raises(UsageError):
        compute_range(s, "percentile", percentile=0)


def test_percentile_on_gaussian_with_outliers():
    x = np.concatenate([GAUSS, np.float32([40, -35, 60])])
    z = stats.norm.ppf(1 - 0.001 / 2)  # 99.9 %: 0.05 % clipped each side
    assert compute_range(streamed(x, 4), "percentile", percentile=99.9) == pytest.approx((-z, z), abs=0.01)
    assert compute_range(streamed(x, 4), "minmax") == (-35, 60)


def reference_kl_argmin(hist: np.ndarray, levels: int) -> int:
    """TensorRT's pseudo-code, bin by bin (what the closed form must reproduce)."""
    best, arg = np.inf, None
    for i in range(levels, len(hist) + 1):
        p = hist[:i].astype(float).copy()
        p[-1] += hist[i:].sum()
        size = i // levels
        q = np.zeros(i)
        for g in range(levels):
            start, stop = g * size, (i if g == levels - 1 else (g + 1) * size)
            nonzero = p[start:stop] != 0
            if nonzero.any():
                q[start:stop][nonzero] = hist[start:stop].sum() / nonzero.sum()
        d = np.inf if np.any((p > 0) & (q == 0)) else kl_divergence(p, q)
        if d < best:
            best, arg = d, i
    return arg


@pytest.mark.parametrize("seed", range(4))
def test_entropy_closed_form_matches_tensorrt_pseudocode(seed):
    rng = np.random.default_rng(seed)
    hist = rng.poisson(np.exp(-np.linspace(0, rng.uniform(2, 8), 160)) * rng.uniform(50, 5000)).astype(float)
    if seed % 2:
        hist[rng.integers(0, 160, 30)] = 0  # empty bins exercise the non-zero bookkeeping
    assert _best_kl_candidate(hist, 16) == reference_kl_argmin(hist, 16)


def test_entropy_on_gaussian_with_outliers():
    x = np.concatenate([GAUSS, np.float32([50, -45])])
    low, high = compute_range(streamed(x, 3), "entropy")
    assert low == -high and 2.5 < high < 5  # clips the outliers, keeps the bulk
    relu = streamed(np.maximum(GAUSS, 0))
    low, high = compute_range(relu, "entropy")
    assert low == 0 and 0.5 < high <= relu.max


def aciq_optimum(levels: int = 256) -> float:
    """argmin_a of 2*int_a^inf (x - a)^2 phi(x) dx + (2a / (levels - 1))^2 / 12 * P(|x| < a)."""

    def cost(a):
        clip = 2 * integrate.quad(lambda x: (x - a) ** 2 * stats.norm.pdf(x), a, np.inf)[0]
        return clip + (2 * a / (levels - 1)) ** 2 / 12 * (1 - 2 * stats.norm.sf(a))

    return optimize.minimize_scalar(cost, bounds=(2, 6), method="bounded").x


def test_mse_on_gaussian_matches_the_analytic_optimum():
    x = ideal(stats.norm.ppf, 2_000_000)
    low, high = compute_range(streamed(x), "mse", symmetric=True)
    assert high == pytest.approx(aciq_optimum(), abs=0.06) and low == -high
    low, high = compute_range(streamed(x), "mse")  # asymmetric search lands there too
    assert (low, high) == pytest.approx((-aciq_optimum(), aciq_optimum()), abs=0.1)


def test_mse_on_uniform_keeps_the_range_and_on_relu_starts_at_zero():
    u = streamed(ideal(lambda q: 4 * q - 1))  # U(-1, 3): clipping only hurts
    assert compute_range(u, "mse") == pytest.approx((-1, 3), abs=0.01)
    low, high = compute_range(streamed(np.maximum(GAUSS, 0)), "mse")
    assert low == 0 and 3 < high < 4.5


def test_unknown_method():
    with pytest.raises(UsageError, match="unknown calibration method 'kl'"):
        compute_range(streamed(GAUSS[:10]), "kl")
