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
from onnxprune.calibration.probes import sample_stride
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


def test_systematic_samples_are_weighted_and_the_range_stays_exact():
    x = np.random.default_rng(3).standard_normal(100_003).astype(np.float32)
    every = streamed(x)
    sampled = TensorStats()
    sampled.update(x, stride=7)
    assert (sampled.min, sampled.max, sampled.count) == (every.min, every.max, every.count)
    assert (sampled.exponent, sampled.first) == (every.exponent, every.first)
    assert sampled.counts.sum() == 7 * len(x[::7])  # each sampled value stands for 7
    kept = TensorStats()
    kept.update(x[::7])
    kept.update_range(every.min, every.max)
    assert np.array_equal(sampled.counts, 7 * kept.counts)
    both = streamed(x).merge(sampled)  # exact and sampled counts estimate the same thing
    assert compute_range(both, "percentile", percentile=99) == pytest.approx(
        compute_range(every, "percentile", percentile=99), abs=0.02
    )


def test_sample_stride_is_a_prime_coprime_with_the_shape():
    assert sample_stride(4096, None) == sample_stride(4096, 4096) == 1
    assert sample_stride(64 * 32 * 32, 8192) == 11  # 8 would read one column in 8, 11 walks them all
    assert sample_stride(7 * 7 * 512, 1000) == 29  # 26 -> 29 (primes 7 would divide the 7x7 maps)
    k = sample_stride(3 * 5 * 7 * 64, 3000)
    assert k >= 3 * 5 * 7 * 64 / 3000 and (3 * 5 * 7 * 64) % k and all(k % p for p in range(2, k))
    positions = np.arange(0, 4 * 16 * 8 * 8, sample_stride(16 * 8 * 8, 100))  # 4 samples [16, 8, 8]
    channel, row, column = (positions // 64) % 16, (positions // 8) % 8, positions % 8
    assert len(set(channel)) == 16 and len(set(row)) == 8 and len(set(column)) == 8


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
    relu = streamed(np.maximum(x, 0))  # half exact zeros: a spike in bin 0
    positive = streamed(np.abs(x[x > 0]))  # the same non-zero values, no spike
    low, high = compute_range(relu, "entropy", symmetric=True)  # 128 levels over [0, t]
    assert low == 0 and 2.5 < high < 5
    assert high == pytest.approx(compute_range(positive, "entropy", symmetric=True)[1], rel=2e-3)


def test_entropy_ignores_the_zero_spike_of_a_relu():
    """U(0, 1] plus as many exact zeros. For a uniform density, clipping at t < 1 piles the
    mass above t into P's last bin while Q spreads it evenly, so KL is smallest with no
    clipping (t = 1, KL = 0). Left in the histogram, the spike in bin 0 would make every Q
    whose first group spans several bins smear it, and the search would stop at the last
    candidate with one bin per group: t = 255.5 / 2048 = 0.12 with 128 levels."""
    u = ideal(lambda q: q, 200_000)
    spiked = streamed(np.concatenate([np.zeros(200_000, np.float32), u]))
    assert compute_range(spiked, "entropy") == pytest.approx((0.0, 1.0), abs=1e-5)
    assert compute_range(spiked, "entropy", symmetric=True) == pytest.approx((0.0, 1.0), abs=1e-5)


def test_entropy_gives_a_non_negative_tensor_256_levels_unless_symmetric():
    """[0, t] holds all 256 uint8 levels (asymmetric) or 128 (symmetric): finer levels lose
    less inside the range, so the KL optimum clips less."""
    x = np.abs(np.concatenate([GAUSS, np.float32([8.0])]))
    asymmetric = compute_range(streamed(x), "entropy")[1]
    symmetric = compute_range(streamed(x), "entropy", symmetric=True)[1]
    assert 4 < symmetric < asymmetric < 5


def test_entropy_keeps_the_range_of_a_far_outlier_with_256_levels():
    """A known limit of the method (documented): with 256 levels the last group of Q starts at
    bin 255 * (i // 256), beyond a bulk that ends before max|x| / 8, so it is empty while P's
    last bin holds the outlier (infinite KL) for every candidate but the full range."""
    x = np.abs(np.concatenate([GAUSS, np.float32([40.0])]))
    assert compute_range(streamed(x), "entropy")[1] == 40.0
    assert 3 < compute_range(streamed(x), "entropy", symmetric=True)[1] < 5


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
