"""Per-model calibration of a per-query statistic and of a count-in-window rule.

The probing detectors mark single queries (too close to the principal's own
earlier queries; sharing a fingerprint with an earlier query) and report a
principal when enough of its last ``window`` queries are marked. Both numbers
are set per model from the model's own traffic, not by hand:

1. **Per-query threshold.** The statistic of the model's first ``target``
   judged queries is collected, across principals (each
   principal contributes at most ``target / min_principals`` of them, so one
   busy caller cannot stand for the model's traffic). The threshold is the
   ``q`` quantile of that sample on the suspicious side: only a share ``q`` of
   the calibration queries would be marked (Chen et al. 2020 set the stateful
   kNN threshold at the 0.1th percentile of benign traffic). With a discrete
   statistic the nearest achievable share may be above ``q``; then it is the
   one used below.
2. **Per-query false-alarm rate.** ``p0`` is the one-sided 95% Clopper-Pearson
   upper bound of the share of calibration queries the threshold marks
   (never below ``q``): the estimate's own uncertainty is paid for, e.g. about
   3/n when none of n queries is marked.
3. **Count rule.** ``min_flagged`` is the smallest count k with
   P(Binomial(window, p0) >= k) <= alpha: a benign principal whose queries are
   marked independently at rate ``p0`` is reported on at most ``alpha`` of its
   windows.
4. **Callers differ.** Marks are not spread evenly: a benign caller that
   keeps to one segment of the input space (one topic, one customer type) is
   marked more often than the pooled share, query after query. So ``p0`` is
   at least the ``caller_quantile`` quantile (0.9) of the calibrating
   principals' own marked shares (principals with at least 10 values): a
   caller marked as often as the 90th-percentile peer is reported on about
   ``alpha`` of its windows.

The rule also records the median of the sample it was computed from (the
model's typical value of the statistic): the yardstick of a detector's minimum
effect size. The rule is recomputed from each following sample of ``target`` queries, so
it follows the model's traffic. Calibration queries are assumed benign, as
the model-space calibration is.
Against attackers active during calibration: the first rule is computed from
the less suspicious half of the principals (by their median statistic); any
principal a rule would itself report on its calibration queries (a binomial
test at ``alpha`` over its own sample) is left out and the rule recomputed from
all the others, until none is. This holds while attackers are fewer than half
of the calibrating principals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

import numpy as np

from detectors.binomial import binomial_critical
from detectors.state_codec import state_type

__all__ = ["CountRule", "TailCalibration", "TailRule", "calibrate_tail",
           "calibration_evidence", "calibration_stats", "check_calibration"]

#: Confidence of the upper bound on the per-query false-alarm rate.
CONFIDENCE: Final = 0.95


@state_type("abuse.tail_rule")
class TailRule:
    """A calibrated marking threshold and count-in-window rule (see the module doc)."""

    __slots__ = ("excluded", "median", "min_flagged", "p0", "principals", "queries", "threshold")

    def __init__(
        self,
        threshold: float,
        p0: float,
        min_flagged: int,
        queries: int,
        principals: int,
        excluded: tuple[str, ...],
        median: float = math.nan,
    ) -> None:
        self.threshold = threshold
        self.p0 = p0
        self.min_flagged = min_flagged
        self.queries = queries
        self.principals = principals
        self.excluded = excluded
        #: Median of the calibration sample: the model's typical value of the
        #: statistic, the yardstick of a minimum effect size.
        self.median = median

    def __repr__(self) -> str:
        return (
            f"TailRule(threshold={self.threshold:.4g}, p0={self.p0:.4g}, "
            f"min_flagged={self.min_flagged}, queries={self.queries}, "
            f"principals={self.principals}, excluded={list(self.excluded)})"
        )


@lru_cache(maxsize=4096)
def check_calibration(quantile: float, alpha: float, principals: int) -> None:
    """Reject calibration params no rule can come from (a config error at start)."""
    if not 0 < quantile < 1 or not 0 < alpha < 1 or principals < 1:
        raise ValueError("quantile and alpha in (0, 1), calibration_principals >= 1")


class CountRule:
    """A probing detector's marking threshold and count-in-window rule, per model.

    The model's calibrated :class:`TailRule` once its :class:`TailCalibration`
    has one, the fixed ``threshold`` and ``min_flagged`` before. Config only:
    the per-model calibrations are the detector's state.
    """

    __slots__ = (
        "alpha", "low", "min_flagged", "principals", "quantile", "queries", "threshold", "window"
    )

    def __init__(
        self,
        *,
        threshold: float,
        min_flagged: int,
        window: int,
        quantile: float,
        alpha: float,
        queries: int,
        principals: int,
        low: bool,
    ) -> None:
        check_calibration(quantile, alpha, principals)
        self.threshold = threshold
        self.min_flagged = min_flagged
        self.window = window
        self.quantile = quantile
        self.alpha = alpha
        self.queries = queries
        self.principals = principals
        self.low = low

    def current(self, cal: TailCalibration) -> tuple[float, int]:
        """(marking threshold, marked queries in a window that report) for a model."""
        rule = cal.rule
        if rule is None:
            return self.threshold, self.min_flagged
        return rule.threshold, rule.min_flagged

    def learn(self, cal: TailCalibration, principal: str, values: Sequence[float]) -> None:
        """Add ``values`` to the model's sample; recompute its rule when the sample is full."""
        if cal.add(principal, values, target=self.queries, min_principals=self.principals):
            cal.finish(q=self.quantile, alpha=self.alpha, window=self.window, low=self.low)


def calibration_evidence(rule: TailRule | None) -> dict[str, Any]:
    """How the thresholds of a finding were set (calibrated per model, or not yet)."""
    if rule is None:
        return {"calibrated": False}
    return {
        "calibrated": True,
        "benign_mark_rate_bound": round(rule.p0, 6),
        "calibration_queries": rule.queries,
        "calibration_principals": rule.principals,
    }


def calibration_stats(rules: Iterable[TailRule | None]) -> dict[str, float]:
    """A detector's ``stats()`` keys for its models' latest rules: how many models
    are calibrated, and the sample sizes the rules rest on (the largest over models).

    >>> calibration_stats([None, TailRule(1.0, 0.01, 3, 500, 12, ())])
    {'calibrated_models': 1, 'calibration_queries': 500, 'calibration_principals': 12}
    """
    found = [r for r in rules if r is not None]
    return {
        "calibrated_models": len(found),
        "calibration_queries": max((r.queries for r in found), default=0),
        "calibration_principals": max((r.principals for r in found), default=0),
    }


def _upper_bound(marked: int, n: int) -> float:
    """One-sided Clopper-Pearson upper bound of a binomial share at CONFIDENCE."""
    if marked >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(CONFIDENCE, marked + 1, n - marked))


def _threshold(values: np.ndarray, q: float, low: bool) -> float:
    """The ``q`` quantile threshold on the suspicious side of sorted ``values``."""
    n = len(values)
    if low:  # mark v < t: the largest t marking at most q*n values
        return float(values[min(math.floor(q * n), n - 1)])
    # mark v >= t: the smallest sample value marking at most q*n values, else the top
    levels = np.unique(values)
    marked = n - np.searchsorted(values, levels, side="left")
    ok = np.flatnonzero(marked <= q * n)
    return float(levels[ok[0]]) if ok.size else float(levels[-1])


def calibrate_tail(
    samples: Mapping[str, Sequence[float]],
    *,
    q: float,
    alpha: float,
    window: int,
    low: bool,
    floor: float | None = None,
    caller_quantile: float | None = 0.9,
) -> TailRule | None:
    """The rule for a statistic whose ``low`` (or high) values are suspicious.

    ``samples`` maps each calibrating principal to its statistics. ``floor``
    bounds the threshold on the lenient side (for ``low``, the threshold is at
    least ``floor``; otherwise at most). ``caller_quantile``: see step 4 of the
    module doc (None: pooled share only). None if no sample is left.

    >>> rng = np.random.default_rng(0)
    >>> benign = {f"u{i}": rng.normal(1.0, 0.1, 50).tolist() for i in range(20)}
    >>> rule = calibrate_tail(benign, q=0.001, alpha=1e-6, window=50, low=True)
    >>> round(rule.threshold, 2), rule.min_flagged, rule.queries
    (0.62, 6, 1000)
    >>> poisoned = {**benign, "eve": [0.01] * 50}
    >>> rule = calibrate_tail(poisoned, q=0.001, alpha=1e-6, window=50, low=True)
    >>> round(rule.threshold, 2), rule.excluded
    (0.62, ('eve',))
    """
    names = [p for p, v in samples.items() if len(v)]
    if not names:
        return None
    # One flat array with a principal code per value: a sample has hundreds of
    # principals with a few values each, so per-principal arrays would cost more.
    lengths = np.array([len(samples[p]) for p in names])
    who = np.repeat(np.arange(len(names)), lengths)
    values = np.fromiter(
        (x for p in names for x in samples[p]), dtype=np.float64, count=int(lengths.sum())
    )
    # A clean start: the rule of the less suspicious half of the principals
    # (by their median statistic), so attackers, if fewer than half, do not set it.
    medians = _group_medians(values if low else -values, who, lengths)
    keep = np.ones(len(names), dtype=bool)
    rule = _rule(values[(medians >= np.median(medians))[who]], q, alpha, window, low, floor)
    if caller_quantile is not None:
        _callers_differ(rule, values, who, lengths, keep, caller_quantile, alpha, window, low)
    excluded: list[str] = []
    while True:
        marked = values < rule.threshold if low else values >= rule.threshold
        counts = np.bincount(who, weights=marked, minlength=len(names))
        crit = {n: binomial_critical(n, rule.p0, alpha) for n in set(lengths[keep].tolist())}
        worst = keep & (counts >= np.array([crit.get(n, 1 << 30) for n in lengths.tolist()]))
        keep &= ~worst
        excluded.extend(sorted(names[i] for i in np.flatnonzero(worst).tolist()))
        if not keep.any():
            return None
        rule = _rule(values[keep[who]], q, alpha, window, low, floor)
        if caller_quantile is not None:
            _callers_differ(rule, values, who, lengths, keep, caller_quantile, alpha, window, low)
        if not worst.any():
            rule.principals = int(keep.sum())
            rule.excluded = tuple(excluded)
            return rule


def _callers_differ(
    rule: TailRule,
    values: np.ndarray,
    who: np.ndarray,
    lengths: np.ndarray,
    keep: np.ndarray,
    quantile: float,
    alpha: float,
    window: int,
    low: bool,
) -> None:
    """Raise ``rule.p0`` to the ``quantile`` of the kept principals' own marked shares."""
    marked = values < rule.threshold if low else values >= rule.threshold
    counts = np.bincount(who, weights=marked, minlength=len(lengths))
    enough = keep & (lengths >= 10)
    if not enough.any():
        return
    share = float(np.quantile(counts[enough] / lengths[enough], quantile))
    if share > rule.p0:
        rule.p0 = share
        rule.min_flagged = binomial_critical(window, share, alpha)


def _group_medians(values: np.ndarray, who: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Median of ``values`` per group code ``who`` (codes 0.., ``lengths`` values each)."""
    order = np.lexsort((values, who))
    ordered = values[order]
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    lo = ordered[starts + (lengths - 1) // 2]
    hi = ordered[starts + lengths // 2]
    out: np.ndarray = (lo + hi) / 2
    return out


def _rule(
    values: np.ndarray,
    q: float,
    alpha: float,
    window: int,
    low: bool,
    floor: float | None,
) -> TailRule:
    values = np.sort(values)
    t = _threshold(values, q, low)
    if floor is not None:
        t = max(t, floor) if low else min(t, floor)
    n = len(values)
    marked = int(np.searchsorted(values, t, side="left"))
    if not low:
        marked = n - marked
    p0 = max(q, _upper_bound(marked, n))
    k = binomial_critical(window, p0, alpha)
    return TailRule(t, p0, k, n, 0, (), float(np.median(values)))


@state_type("abuse.tail_calibration")
class TailCalibration:
    """One model's calibration: a sample of statistics, and the latest :class:`TailRule`.

    Sampling never stops: each time ``target`` statistics are collected the
    rule is recomputed from them (so it follows a model whose traffic, or whose
    detector's own state such as an index filling up, changes) and a new sample
    starts. A sample from which no rule can be made keeps the previous rule.

    >>> cal = TailCalibration()
    >>> for i in range(10):
    ...     done = cal.add(f"u{i}", [1 + j / 100 for j in range(60)], target=500, min_principals=10)
    >>> done, cal.queries
    (True, 500)
    >>> rule = cal.finish(q=0.001, alpha=1e-6, window=50, low=True)
    >>> rule.threshold, rule.min_flagged, cal.queries
    (1.0, 6, 0)
    """

    __slots__ = ("queries", "rule", "samples")

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self.queries = 0
        self.rule: TailRule | None = None

    def add(
        self, principal: str, values: Sequence[float], *, target: int, min_principals: int
    ) -> bool:
        """Collect ``values`` (at most ``target / min_principals`` per principal).

        True when the sample has reached ``target`` queries (call :meth:`finish`).
        """
        own = self.samples.setdefault(principal, [])
        room = min(math.ceil(target / min_principals) - len(own), target - self.queries)
        if room > 0:
            own.extend(values[:room])
            self.queries += min(room, len(values))
        return self.queries >= target

    def finish(
        self,
        *,
        q: float,
        alpha: float,
        window: int,
        low: bool,
        floor: float | None = None,
        caller_quantile: float | None = 0.9,
    ) -> TailRule | None:
        """Recompute the rule from the sample and start a new sample."""
        rule = calibrate_tail(self.samples, q=q, alpha=alpha, window=window, low=low, floor=floor,
                              caller_quantile=caller_quantile)
        self.rule = rule or self.rule
        self.samples, self.queries = {}, 0
        return self.rule
