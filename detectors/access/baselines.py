"""Small learnt baselines of the access and audit detectors.

Each is a tiny ``__slots__`` class holding numbers (robust log-space
baselines, a decaying log histogram, a novelty rate), registered as a state
type so the detectors' snapshots name it by a stable name.

>>> b = LogBaselines(2)
>>> for v in (100, 120, 90, 110, 100, 95, 105, 130, 85, 100):
...     limits = b.update([v, 10 * v], alpha=0.05, warmup=5, z=4.0, min_ratio=5.0,
...                       floors=(10.0, 10.0))
>>> round(b.usual(0)), round(b.usual(1)), limits[0] > 500
(103, 1027, True)
"""

from __future__ import annotations

import math
from typing import Final

from detectors.state import Cooldown
from detectors.state_codec import state_type

__all__ = ["LogBaselines", "LogHistogram", "NoveltyRate", "WindowedBaseline"]

#: log1p units: the smallest spread assumed for a baseline, so that a perfectly
#: steady service account (spread 0) does not fire on a 10% wobble.
_MIN_LOG_SD: Final = 0.25
#: Mean absolute deviation to standard deviation, for a normal law (sqrt(pi/2)).
_MAD_TO_SD: Final = 1.2533
#: Residuals beyond this many spreads are clipped before they move a baseline
#: (Huber-style), so one attack window barely shifts what "usual" means.
_HUBER_K: Final = 3.0
#: A peer histogram decays once per this many additions.
_DECAY_EVERY: Final = 64


@state_type("access.log_baselines")
class LogBaselines:
    """Robust EWMAs of ``log1p(value)`` for ``k`` metrics updated together.

    Each metric has a centre and a mean absolute deviation. While fewer than
    ``warmup`` values are seen the update is a plain running mean; afterwards
    residuals are clipped at three spreads before they move the baseline
    (Huber-style), so one huge window (an attack, a month-end run) shifts
    "usual" by a bounded amount. :meth:`update` returns, per metric, the value
    above which an observation is far above usual: the largest of ``z``
    robust spreads above the centre in log space, ``min_ratio`` times the
    usual value and an absolute floor. The metrics share one method call and
    one loop because a window close updates all of them (cost per event).
    """

    __slots__ = ("devs", "means", "n")

    def __init__(self, k: int) -> None:
        self.means = [0.0] * k
        self.devs = [0.0] * k
        self.n = 0

    def update(
        self,
        values: list[int] | list[float],
        alpha: float,
        warmup: int,
        z: float,
        min_ratio: float | tuple[float, ...],
        floors: tuple[float, ...],
    ) -> list[float]:
        """Fold ``values`` (one per metric) in; the new limits, one per metric.

        ``min_ratio`` is one ratio for every metric or one per metric.
        """
        ratios = min_ratio if isinstance(min_ratio, tuple) else (min_ratio,) * len(values)
        n = self.n
        means, devs = self.means, self.devs
        a = max(alpha, 1.0 / (n + 1))
        log1p, expm1 = math.log1p, math.expm1
        limits = []
        for i, value in enumerate(values):
            x = log1p(value)
            if n == 0:
                mean, dev = x, 0.0
            else:
                mean, dev = means[i], devs[i]
                r = x - mean
                if n >= warmup:
                    spread = _MAD_TO_SD * dev
                    c = _HUBER_K * (spread if spread > _MIN_LOG_SD else _MIN_LOG_SD)
                    r = c if r > c else -c if r < -c else r
                mean += a * r
                dev += a * ((r if r >= 0 else -r) - dev)
            means[i], devs[i] = mean, dev
            spread = _MAD_TO_SD * dev
            usual = expm1(mean)
            limits.append(
                max(
                    expm1(mean + z * (spread if spread > _MIN_LOG_SD else _MIN_LOG_SD)),
                    ratios[i] * (usual if usual > 1.0 else 1.0),
                    floors[i],
                )
            )
        self.n = n + 1
        return limits

    def usual(self, i: int = 0) -> float:
        """The typical value of metric ``i`` (back from log space; 0 before any)."""
        return math.expm1(self.means[i]) if self.n else 0.0

    def sd(self, i: int = 0) -> float:
        """Robust spread of metric ``i`` in log1p units (never below a floor)."""
        return max(_MAD_TO_SD * self.devs[i], _MIN_LOG_SD)

    def __getstate__(self) -> tuple[list[float], list[float], int]:
        return (self.means, self.devs, self.n)

    def __setstate__(self, state: tuple[list[float], list[float], int]) -> None:
        self.means, self.devs, self.n = state


@state_type("access.log_histogram")
class LogHistogram:
    """Decaying histogram of values on a log2 scale: a cheap population quantile.

    Used as the peer baseline: every closed window of every principal on the
    partition adds one value, so quantiles describe what peers usually do.

    >>> h = LogHistogram()
    >>> for v in range(1, 1001):
    ...     h.add(float(v))
    >>> 400 < h.quantile(0.5) < 700, 700 < h.count < 1000  # older values fade
    (True, True)
    """

    __slots__ = ("bins", "count", "decay", "pending")

    _NBINS: Final = 64

    def __init__(self, decay: float = 0.9995) -> None:
        self.bins = [0.0] * self._NBINS
        self.count = 0.0
        self.decay = decay
        self.pending = 0

    def add(self, value: float) -> None:
        index = min(self._NBINS - 1, max(0, int(math.log2(value + 1.0))))
        self.bins[index] += 1.0
        self.count += 1.0
        self.pending += 1
        if self.pending >= _DECAY_EVERY:
            # Decay in batches: the same forgetting as per add, 1/64th of the cost.
            factor = self.decay**self.pending
            self.bins = [b * factor for b in self.bins]
            self.count *= factor
            self.pending = 0

    def quantile(self, q: float) -> float:
        """Quantile ``q``, interpolated log-linearly inside its bin (0 when empty).

        A bin spans a factor of two: its upper edge would overstate a
        quantile up to twofold, and a floor built on it too.
        """
        if self.count <= 0:
            return 0.0
        target = q * self.count
        running = 0.0
        for i, b in enumerate(self.bins):
            if b > 0 and running + b >= target:
                frac = (target - running) / b
                return float(2 ** (i + frac) - 1.0)
            running += b
        return float(2**self._NBINS)

    def __getstate__(self) -> tuple[list[float], float, float, int]:
        return (self.bins, self.count, self.decay, self.pending)

    def __setstate__(self, state: tuple[list[float], float, float, int]) -> None:
        self.bins, self.count, self.decay, self.pending = state


@state_type("access.novelty_rate")
class NoveltyRate:
    """Laplace-smoothed, exponentially decayed rate of "this is new".

    ``(new + 1) / (total + 2)`` over decayed counts: 0.5 with no history, low
    only after many events with few novelties; forgets at rate ``alpha`` per
    event (a memory of about ``1 / alpha`` events).

    >>> r = NoveltyRate()
    >>> for i in range(1000):
    ...     r.update(i < 3, alpha=0.002)
    >>> round(r.rate(), 4), round(NoveltyRate().rate(), 2)
    (0.0032, 0.5)
    """

    __slots__ = ("new", "total")

    def __init__(self) -> None:
        self.new = 0.0
        self.total = 0.0

    def update(self, is_new: bool, alpha: float) -> None:
        keep = 1.0 - alpha
        self.total = self.total * keep + 1.0
        self.new = self.new * keep + (1.0 if is_new else 0.0)

    def rate(self) -> float:
        return (self.new + 1.0) / (self.total + 2.0)

    def __getstate__(self) -> tuple[float, float]:
        return (self.new, self.total)

    def __setstate__(self, state: tuple[float, float]) -> None:
        self.new, self.total = state


class WindowedBaseline(Cooldown):
    """Base of per-entity state counted per event-time window against its own past.

    The one windowed baseline of the access detectors: ``totals`` of ``k``
    metrics in the window in progress (number ``window``), and ``base``, a
    :class:`LogBaselines` of the past *active* windows, with the ``limits``
    it gives and the count of ``windows`` folded in. A :class:`Cooldown` too:
    every rule judged on a window reports once per cooldown.

    >>> c = WindowedBaseline(); c.init_window(1, window=0)
    >>> for w in range(12):
    ...     c.totals[0] += 10
    ...     _ = c.close_window(w + 1, alpha=0.1, warmup=5, z=4.0, min_ratio=3.0, floors=(5.0,))
    >>> c.windows, c.window, c.totals, round(c.limits[0])
    (12, 12, [0], 30)
    """

    __slots__ = ("base", "limits", "totals", "window", "windows")

    def init_window(self, k: int, window: int) -> None:
        self.window = window
        self.totals = [0] * k
        self.base = LogBaselines(k)
        self.limits = [math.inf] * k
        self.windows = 0

    def close_window(self, window: int, alpha: float, warmup: int, z: float,
                     min_ratio: float | tuple[float, ...], floors: tuple[float, ...]) -> bool:
        """Fold the window in progress into the baseline if it was active (some total
        non-zero; True then), and start window ``window`` from zero."""
        totals = self.totals
        active = any(totals)
        if active:
            self.windows += 1
            self.limits = self.base.update(totals, alpha, warmup, z, min_ratio, floors)
        self.window = window
        self.totals = [0] * len(totals)
        return active
