"""Uncertainty of a score over n items: 95% intervals for a mean of per-item scores.

Proportions (every item scores 0 or 1: accuracy, exact match) get the Wilson score interval, which
stays inside [0, 1] and is sensible at 0% / 100% and small n, unlike the normal (Wald) interval.
Continuous means (token F1, mean IoU, CER) get the normal interval mean +- z * sd / sqrt(n) with the
sample standard deviation (ddof = 1); it needs n >= 2.

    est = estimate([1, 0, 1, 1], proportion=True)   # Estimate(value=0.75, n=4, low=..., high=..., ...)
    est.format()                                     # '0.750 [0.301, 0.954]'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean over n items with its 95% interval [low, high]; method: "wilson" or "normal"
    (NaN bounds when undefined: no items, or a continuous mean of one item)."""

    value: float
    n: int
    low: float
    high: float
    method: str

    def format(self, digits: int = 3) -> str:
        """'value [low, high]' ('-' for an undefined value or interval)."""
        def f(x: float) -> str:
            return f"{x:.{digits}f}" if math.isfinite(x) else "-"

        return f"{f(self.value)} [{f(self.low)}, {f(self.high)}]"


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion successes / n; (nan, nan) when n == 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval always holds p (exactly 0 at 0 / n and 1 at n / n); rounding must not move it past p.
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def normal_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """mean +- z * standard error (sample sd, ddof = 1); (nan, nan) for fewer than 2 values."""
    x = np.asarray(values, np.float64)
    if x.size < 2:
        return math.nan, math.nan
    mean, se = float(x.mean()), float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean - z * se, mean + z * se


def estimate(values: Sequence[float], *, proportion: bool) -> Estimate:
    """The mean of per-item scores with its 95% interval: Wilson for a proportion (every value must
    be 0 or 1), normal otherwise."""
    x = np.asarray(values, np.float64)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    if proportion:
        if not np.isin(x, (0.0, 1.0)).all():
            raise ValueError("a proportion needs per-item scores of 0 or 1; use proportion=False for a mean")
        low, high = wilson_interval(float(x.sum()), n)
        return Estimate(mean, n, low, high, "wilson")
    low, high = normal_interval(x)
    # Every per-item score here lies in [0, 1] (F1, IoU, similarities): so does their mean.
    return Estimate(mean, n, max(low, 0.0), min(high, 1.0), "normal")
