"""Activation statistics and clipping thresholds (seed 001): KL divergence, max, percentile; and
the best fixed-point position given a threshold.

`Statistics` accumulates, per tensor, the min, the max |x| and a histogram of |x| with 2048 bins
over [0, max|x|] (two passes over the calibration data: ranges first, then histograms).

`kl_threshold` is TensorRT's entropy calibration: for every candidate clip bin ``i`` (from the
number of quantization levels up to 2048), the reference distribution P is the histogram cut at
``i`` with the clipped tail added to its last bin; Q is P merged into `levels` bins and expanded
back over P's non-empty bins; the threshold is the one minimising KL(P || Q). Exact zeros (the
bulk of a ReLU output) are counted apart and left out of the histogram: they quantize exactly
at any threshold, and smearing their spike across the first merged bin would bias the search
toward thresholds that clip far too much.

`best_frac` is seed 001's "best base point": given the threshold T and the format, it tries the
fractional lengths around the one where T just fits and keeps the one with the least squared
error over the histogram (values above T saturate to T).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BINS = 2048


@dataclass
class TensorStats:
    min: float = np.inf
    max: float = -np.inf
    absmax: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    count: int = 0
    zeros: int = 0

    @property
    def bin_width(self) -> float:
        return self.absmax / BINS if self.absmax > 0 else 1.0

    @property
    def centers(self) -> np.ndarray:
        return (np.arange(BINS) + 0.5) * self.bin_width

    @property
    def nonnegative(self) -> bool:
        return self.min >= 0.0


class Statistics:
    """Per-tensor ranges (pass 1, `observe_range`) and |x| histograms (pass 2, `observe_hist`)."""

    def __init__(self) -> None:
        self.tensors: dict[str, TensorStats] = {}

    def observe_range(self, name: str, x: np.ndarray) -> None:
        s = self.tensors.setdefault(name, TensorStats())
        if x.size:
            s.min = min(s.min, float(x.min()))
            s.max = max(s.max, float(x.max()))
            s.absmax = max(s.absmax, float(np.abs(x).max()))

    def observe_hist(self, name: str, x: np.ndarray) -> None:
        s = self.tensors[name]
        a = np.abs(x)
        nonzero = a[a != 0]
        s.zeros += a.size - nonzero.size
        if s.absmax > 0 and nonzero.size:
            h, _ = np.histogram(nonzero, bins=BINS, range=(0.0, s.absmax))
            s.hist += h
        s.count += x.size


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    p = p / p.sum()
    q = q / q.sum()
    qm = q[mask]
    if np.any(qm == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / qm)))


def kl_threshold(stats: TensorStats, levels: int) -> float:
    """The clipping threshold minimising KL(P || Q) for `levels` positive quantization levels
    (over the non-zero values)."""
    hist = stats.hist.astype(np.float64)
    if stats.absmax <= 0 or hist.sum() == 0:
        return max(stats.absmax, 1e-12)
    if levels >= BINS:
        return stats.absmax
    nonzero = np.nonzero(hist)[0]
    last = int(nonzero[-1]) + 1
    if last <= levels:
        return (last + 0.5) * stats.bin_width if last < BINS else stats.absmax
    best_i, best_kl = BINS, np.inf
    cumulative_tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    for i in range(levels, BINS + 1):
        p = hist[:i].copy()
        if i < BINS:
            p[i - 1] += cumulative_tail[i]
        # merge the i bins into `levels` groups, then expand over each group's non-empty bins
        edges = np.linspace(0, i, levels + 1).astype(np.int64)
        sums = np.add.reduceat(hist[:i], edges[:-1])
        nz = (p > 0).astype(np.float64)
        nz_counts = np.add.reduceat(nz, edges[:-1])
        per_bin = np.divide(sums, nz_counts, out=np.zeros_like(sums), where=nz_counts > 0)
        q = np.repeat(per_bin, np.diff(edges)) * nz
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return (best_i + 0.5) * stats.bin_width if best_i < BINS else stats.absmax


def percentile_threshold(stats: TensorStats, percentile: float) -> float:
    """The `percentile` of |x| over all values, exact zeros included."""
    cdf = np.cumsum(stats.hist) + stats.zeros
    if cdf[-1] == 0:
        return max(stats.absmax, 1e-12)
    idx = int(np.searchsorted(cdf, percentile / 100.0 * cdf[-1]))
    return (min(idx, BINS - 1) + 1) * stats.bin_width


def threshold(stats: TensorStats, method: str, levels: int, percentile: float = 99.99) -> float:
    if method == "max":
        return max(stats.absmax, 1e-12)
    if method == "kl":
        return kl_threshold(stats, levels)
    if method == "percentile":
        return percentile_threshold(stats, percentile)
    raise ValueError(f"calibration method {method!r}")


def quant_error(values: np.ndarray, weights: np.ndarray, frac: int, qmax: int, t: float) -> float:
    """Weighted squared error of saturating at `t`, rounding at 2**-frac, saturating at qmax."""
    step = 2.0**-frac
    clipped = np.minimum(values, t)
    q = np.minimum(np.floor(clipped / step + 0.5), qmax) * step
    return float(np.sum(weights * (values - q) ** 2))


def best_frac(stats: TensorStats, t: float, qmax: int) -> int:
    """Seed 001's best fixed-point position for threshold `t` and `qmax` positive levels."""
    t = max(t, 1e-12)
    f0 = int(np.floor(np.log2(qmax / t)))  # qmax * 2**-f0 >= t
    candidates = range(f0 - 1, f0 + 3)
    values, weights = stats.centers, stats.hist.astype(np.float64)
    if weights.sum() == 0:
        return f0
    errors = [quant_error(values, weights, f, qmax, t) for f in candidates]
    return int(candidates[int(np.argmin(errors))])


def weight_frac(w: np.ndarray, qmax: int) -> int:
    """Best fractional length for one output channel's weights (least squared rounding error)."""
    m = float(np.abs(w).max()) if w.size else 0.0
    if m == 0.0:
        return 0
    f0 = int(np.floor(np.log2(qmax / m)))
    best, best_err = f0, np.inf
    for f in range(f0, f0 + 3):
        q = np.clip(np.floor(w * 2.0**f + 0.5), -qmax - 1, qmax) * 2.0**-f
        err = float(np.sum((w - q) ** 2))
        if err < best_err:
            best, best_err = f, err
    return best
