"""Normality of a sample of distances: PRADA's statistic (Juuti et al. 2019).

:func:`shapiro_w` is Shapiro-Wilk's W with Royston's weights, cached per
sample size; :func:`royston_sigma` is the sampling deviation of log(1 - W)
for normal samples, the yardstick PRADA's peer calibration uses.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["log_gap", "royston_sigma", "shapiro_w"]


@lru_cache(maxsize=256)
def _swilk_coefficients(n: int) -> np.ndarray:
    """Shapiro-Wilk weights a_1..a_n for samples of size n (Royston 1992, AS R94)."""
    from scipy.special import ndtri

    m = ndtri((np.arange(1, n + 1) - 0.375) / (n + 0.25))
    c = m / math.sqrt(float(m @ m))
    u = 1.0 / math.sqrt(n)
    an = c[-1] + np.polyval([-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, 0.0], u)
    a = m.copy()
    if n > 5:
        an1 = c[-2] + np.polyval([-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, 0.0], u)
        phi = (m @ m - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * an**2 - 2 * an1**2)
        a = m / math.sqrt(phi)
        a[-1], a[-2], a[0], a[1] = an, an1, -an, -an1
    else:
        phi = (m @ m - 2 * m[-1] ** 2) / (1 - 2 * an**2)
        a = m / math.sqrt(phi)
        a[-1], a[0] = an, -an
    a.flags.writeable = False
    result: np.ndarray = a
    return result


def shapiro_w(distances: np.ndarray, clip_sigma: float = 3.0) -> float:
    """Shapiro-Wilk W of ``distances`` after dropping values beyond ``clip_sigma`` SDs.

    PRADA's test statistic: near 1 for normal-looking samples. Computed with
    Royston's weights, cached per sample size (scipy's ``shapiro`` gives the
    same W to about 1e-4 but costs several times more per call).

    >>> rng = np.random.default_rng(0)
    >>> shapiro_w(rng.normal(5, 1, 500)) > 0.99, shapiro_w(rng.exponential(1, 500)) < 0.9
    (True, True)
    """
    d = np.asarray(distances, dtype=np.float64)
    mu, sd = d.mean(), d.std()
    if sd > 0:
        d = d[np.abs(d - mu) <= clip_sigma * sd]
    if len(d) < 3 or np.ptp(d) == 0:
        return 0.0
    d = np.sort(d)
    centred = d - d.mean()
    w = float(_swilk_coefficients(len(d)) @ d) ** 2 / float(centred @ centred)
    return min(w, 1.0)


def royston_sigma(n: int) -> float:
    """Standard deviation of log(1 - W) for n normal values (Royston 1992, 12 <= n <= 5000).

    >>> round(royston_sigma(500), 3)
    0.416
    """
    u = math.log(min(max(n, 12), 5000))
    return math.exp(0.0030302 * u * u - 0.082676 * u - 0.4803)


def log_gap(w: float) -> float:
    """log(1 - W): near normal across samples (Royston), large when W is small."""
    return math.log(max(1.0 - w, 1e-12))

