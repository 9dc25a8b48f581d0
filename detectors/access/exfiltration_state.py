"""Per-principal state of :class:`~detectors.access.exfiltration.ExfiltrationDetector`.

One :class:`ReadWindow` per principal: the totals of the event-time window in
progress and their baseline (a :class:`~detectors.access.baselines.WindowedBaseline`),
the limits that window is judged against, the day's volume for the low and
slow rule, and the principal's breadth (what it ever read). The rules'
arithmetic on one principal lives here; the peer population, shared by all
principals of a partition, stays with the detector.
"""

from __future__ import annotations

import math
from typing import Final

from detectors.access.baselines import LogBaselines, WindowedBaseline
from detectors.state_codec import state_type

__all__ = ["METRICS", "ReadWindow"]

#: Metrics judged per window, in the order of ``totals``; the order is the report order.
METRICS: Final = ("bytes", "records", "datasets", "models")
#: Distinct resources remembered per window (breadth beyond this is capped).
_MAX_DISTINCT: Final = 256
#: Resources remembered per principal as ever read (its breadth).
_MAX_KNOWN: Final = 1024


@state_type("access.exfiltration_window")
class ReadWindow(WindowedBaseline):
    """What one principal read: this window, this day, and ever (capped)."""

    __slots__ = (
        "datasets",
        "day",
        "day_base",
        "day_bytes",
        "day_flagged",
        "day_limits",
        "day_new",
        "days",
        "first_ts",
        "judge",
        "judge_gen",
        "known_datasets",
        "known_models",
        "models",
    )

    def __init__(self, window: int, ts: float) -> None:
        super().__init__()
        self.first_ts = ts
        self.init_window(4, window)  # totals: bytes, records, distinct datasets, distinct models
        self.datasets: set[str] = set()
        self.models: set[str] = set()
        #: The limits the window in progress is judged against (own history,
        #: peers, population floor, breadth), and the peer generation they used.
        self.judge = [math.inf, math.inf, math.inf, math.inf]
        self.judge_gen = -1
        #: Low and slow: this UTC day's bytes and never-read datasets, the
        #: baseline of daily bytes over active days, and today's limits.
        self.day = int(ts // 86400)
        self.day_bytes = 0
        self.day_flagged = False  # a finding today already tells this day's story
        self.day_new: set[str] = set()
        self.day_base = LogBaselines(1)
        self.days = 0
        self.day_limits = (math.inf, math.inf)
        #: Everything it ever read (capped): its breadth, and what "never read" means.
        self.known_datasets: set[str] = set()
        self.known_models: set[str] = set()

    def count(self, nbytes: int, records: int, model: str | None, dataset: str | None) -> None:
        """Add one read of ``nbytes`` bytes and ``records`` records of a model or dataset."""
        totals = self.totals
        totals[0] += nbytes
        totals[1] += records
        self.day_bytes += nbytes
        if model is not None:
            models = self.models
            if model not in models and len(models) < _MAX_DISTINCT:
                models.add(model)
                totals[3] = len(models)
        elif dataset is not None:
            datasets = self.datasets
            if dataset not in datasets and len(datasets) < _MAX_DISTINCT:
                datasets.add(dataset)
                totals[2] = len(datasets)
                if dataset not in self.known_datasets and len(self.day_new) < _MAX_DISTINCT:
                    self.day_new.add(dataset)

    def remember_breadth(self) -> None:
        """Add the window's datasets and models to what it ever read (capped)."""
        for ds in self.datasets:
            if len(self.known_datasets) >= _MAX_KNOWN:
                break
            self.known_datasets.add(ds)
        for m in self.models:
            if len(self.known_models) >= _MAX_KNOWN:
                break
            self.known_models.add(m)

    def next_window(self) -> None:
        """Forget the finished window's resources; its limits are derived anew."""
        self.judge_gen = -1
        self.datasets = set()
        self.models = set()

    def roll_day(
        self,
        day: int,
        *,
        alpha: float,
        warmup: int,
        z: float,
        slow_ratio: float,
        slow_min_days: int,
        slow_min_new: int,
        breadth_factor: float,
    ) -> None:
        """Start UTC ``day``: fold the previous day's bytes into the daily baseline
        (if it had reads) and set what today must exceed for the low and slow rule."""
        if day == self.day:
            return
        if self.day_bytes:
            self.days += 1
            self.day_base.update([self.day_bytes], alpha, warmup, z, slow_ratio, (0.0,))
            # What today must both exceed: a multiple of the usual day's
            # volume, and a count of never-read datasets relative to the
            # principal's breadth (a stable reader touches few new ones).
            # Until slow_min_days are seen, breadth is still being
            # discovered (a first partial day knows few datasets): no rule.
            self.day_limits = (
                slow_ratio * max(self.day_base.usual(0), 1.0)
                if self.days >= slow_min_days
                else math.inf,
                max(float(slow_min_new), breadth_factor * len(self.known_datasets)),
            )
        self.day = day
        self.day_flagged = False
        self.day_bytes = 0
        self.day_new = set()

    def slow_day(self) -> bool:
        """True if today is a low and slow theft not reported yet."""
        return (
            self.day_bytes > self.day_limits[0]
            and len(self.day_new) >= self.day_limits[1]
            and not self.day_flagged
        )

    def derive(
        self,
        peer_gen: int,
        peer_floor: list[float],
        peer_limits: list[float],
        *,
        warmup: int,
        own_min: int,
        short_peer_factor: float,
        breadth_factor: float,
    ) -> None:
        """The limits the window is judged against (once per window/peer refresh).

        With some history of its own, its own limits, never below the
        population's quantile ``peer_floor`` (a short history needs the
        population; a full one is judged without while the population is too
        small) nor, for breadth, ``breadth_factor`` times what it has ever
        touched; with no history, ``peer_limits`` (a multiple of the population).
        """
        self.judge_gen = peer_gen
        if self.windows >= warmup:
            # A long history of its own stands even without a population yet.
            judge = [
                max(own, pop if pop < math.inf else 0.0)
                for own, pop in zip(self.limits, peer_floor, strict=True)
            ]
        elif self.windows >= own_min:
            # A few windows say little about a principal's range (an engineer's
            # first model download dwarfs its first reads): a margin over peers.
            f = short_peer_factor
            judge = [max(own, f * pop) for own, pop in zip(self.limits, peer_floor, strict=True)]
        else:
            judge = list(peer_limits)
        judge[2] = max(judge[2], breadth_factor * len(self.known_datasets))
        judge[3] = max(judge[3], breadth_factor * len(self.known_models))
        self.judge = judge

    def over_limit(self, warm: bool, single_factor: float) -> int | None:
        """The first metric above its limit, or None.

        Without a full history (not ``warm``), one big read of one resource is
        how a heavy user's day looks as often as a theft: the volume must then
        clear ``single_factor`` times the limit; spread over several, not.
        """
        totals, limits = self.totals, self.judge
        single = not warm and totals[2] + totals[3] < 2
        for i in range(4):
            if totals[i] > limits[i] and not (
                single and i < 2 and totals[i] <= single_factor * limits[i]
            ):
                return i
        return None
