"""Critical counts of binomial tests: the one place detectors get them.

A detector that counts events of a kind among ``n`` (outlying rows in a
window, low-confidence answers in a block, flagged queries in a window) and
knows the share ``p`` expected when nothing is wrong reports when the count
reaches the smallest ``k`` whose upper tail ``P(X >= k)`` is at most its
false-alarm probability ``alpha``.

>>> binomial_critical(50, 0.001, 1e-6), binomial_critical(50, 0.1, 1e-6)
(4, 18)
>>> binomial_critical(2000, 0.02, 2.5e-6)
73

A share re-measured at every block (a baseline that moves a little) would make
a new scipy call each time: :func:`binomial_critical_count` takes it rounded
to 0.1% and caches the answer.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["binomial_critical", "binomial_critical_count"]


def binomial_critical(n: int, p: float, alpha: float) -> int:
    """Smallest k >= 1 with P(X >= k) <= alpha for X ~ Binomial(n, p).

    ``p`` is clamped into (0, 1): a share of 0 or 1 measured on a finite
    reference is not a certainty.
    """
    from scipy.stats import binom  # lazily: scipy's import costs ~0.2 s

    return max(int(binom.isf(alpha, n, min(max(p, 1e-12), 1.0 - 1e-12))) + 1, 1)


@lru_cache(maxsize=4096)
def binomial_critical_count(n: int, p0_permille: int, alpha: float) -> int:
    """:func:`binomial_critical` at ``p = p0_permille / 1000``, clamped into [0.001, 0.999].

    >>> binomial_critical_count(50, 100, 1e-6), binomial_critical_count(50, 0, 1e-6)
    (18, 4)
    """
    return binomial_critical(n, min(max(p0_permille, 1), 999) / 1000.0, alpha)
