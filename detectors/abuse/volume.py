"""Abusive query volume: a principal's request rate against its own baseline and its peers.

:class:`PrincipalRateDetector` compares a principal with its own history;
:class:`PeerRateDetector` compares it with the other callers of the same model,
which also covers principals too new to have a history (a fresh API key that
starts flooding, or a knockoff thief on a new account).

Each principal's requests are counted in event-time buckets. A closed bucket
updates an exponentially weighted mean and variance of ``log1p(count)``; the
bucket in progress is judged as it fills, so a flood is reported while it
happens, not one bucket later. The threshold is the larger of
``expm1(mean + z * sd)``, ``min_ratio`` times the usual rate, and
``min_count``: a quiet caller that sends 40 requests in a minute is not an
attack, a caller that usually sends 20 and now sends 2,000 is.

>>> from detectors.events import InferenceEvent
>>> from detectors.findings import Source
>>> det = PrincipalRateDetector(bucket_seconds=60, warmup_buckets=5)
>>> def query(t, who="alice"):
...     ev = InferenceEvent(ts=t, model_id="m", request_id=str(t), principal=who,
...                         features=[0.0], prediction=0)
...     return det.process(ev, Source("ml.inference", 0, int(t * 10)))
>>> fired = [t for t in range(0, 600, 6) if query(float(t))]   # 10 a minute
>>> fired
[]
>>> flood = [query(600 + i / 10) for i in range(400)]          # 400 in 40 s
>>> next(i for i, f in enumerate(flood) if f)
50
"""

from __future__ import annotations

import math
from collections import Counter
from typing import ClassVar, Final

from detectors.abuse.common import ATLAS_VOLUME, QuietCooldown, principal_finding
from detectors.base import Detector
from detectors.events import Event, InferenceEvent
from detectors.findings import Finding, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["PeerRateDetector", "PrincipalRateDetector"]

#: Idle buckets replayed into the baseline at most (older history is ~forgotten anyway).
_MAX_IDLE_UPDATES: Final = 32
#: Bursts at one hour of day less than this apart are one occasion (one night's job).
_SAME_OCCASION_S: Final = 12 * 3_600


@state_type("abuse.principal_rate")
class _Rate:
    __slots__ = ("bucket", "count", "fired", "limit", "mean", "n", "var")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        self.count = 0
        self.mean = 0.0
        self.var = 0.0
        self.n = 0
        self.limit = math.inf
        self.fired = -1


class PrincipalRateDetector(Detector):
    """Query rate per principal far above the principal's own history."""

    name: ClassVar[str] = "volume.principal_rate"
    state_fields: ClassVar[tuple[str, ...]] = ("table",)
    event_types: ClassVar[frozenset[str]] = frozenset({"inference"})

    def __init__(
        self,
        bucket_seconds: float = 60.0,
        alpha: float = 0.05,
        z_threshold: float = 6.0,
        min_ratio: float = 5.0,
        min_count: int = 50,
        warmup_buckets: int = 10,
        max_principals: int = 200_000,
    ) -> None:
        if bucket_seconds <= 0 or not 0 < alpha < 1:
            raise ValueError("bucket_seconds must be > 0 and alpha in (0, 1)")
        self.bucket_seconds = bucket_seconds
        self.alpha = alpha
        self.z_threshold = z_threshold
        self.min_ratio = min_ratio
        self.min_count = min_count
        self.warmup_buckets = warmup_buckets
        self.table: EntityTable[_Rate] = EntityTable(max_principals)

    def _close(self, st: _Rate, bucket: int) -> None:
        """Fold the finished bucket, then idle ones, into the baseline."""
        a = self.alpha
        values = [math.log1p(st.count)] + [0.0] * min(bucket - st.bucket - 1, _MAX_IDLE_UPDATES)
        for x in values:
            if st.n == 0:
                st.mean, st.var = x, 0.0
            else:
                diff = x - st.mean
                incr = a * diff
                st.mean += incr
                st.var = (1 - a) * (st.var + diff * incr)
            st.n += 1
        usual = math.expm1(st.mean)
        statistical = math.expm1(st.mean + self.z_threshold * math.sqrt(st.var))
        st.limit = max(statistical, self.min_ratio * usual, float(self.min_count))
        st.bucket = bucket
        st.count = 0

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, InferenceEvent)
        bucket = int(event.ts // self.bucket_seconds)  # type: ignore[operator]
        st = self.table.touch(event.principal, lambda: _Rate(bucket))
        if bucket > st.bucket:
            self._close(st, bucket)
        st.count += 1
        if st.count < st.limit or st.n < self.warmup_buckets or st.fired == st.bucket:
            return None
        st.fired = st.bucket
        usual = math.expm1(st.mean)
        ratio = st.count / max(usual, 1.0)
        return principal_finding(
            self.name,
            "denial_of_service",
            event,
            source,
            severity="high" if ratio >= 4 * self.min_ratio else "medium",
            summary=(
                f"Principal sent {st.count} requests within {self.bucket_seconds:g}s, "
                f"{ratio:.0f}x its usual {usual:.1f} per bucket."
            ),
            evidence={
                "observed_count": st.count,
                "window_seconds": self.bucket_seconds,
                "baseline_per_window": round(usual, 3),
                "threshold": round(st.limit, 3),
                "ratio": round(ratio, 2),
                "baseline_windows": st.n,
            },
            atlas=ATLAS_VOLUME,
            id_key=f"bucket:{st.bucket}",
        )


@state_type("abuse.peer_rate_principal")
class _PeerRate(QuietCooldown):
    __slots__ = ("bucket", "count", "first_bucket", "hours", "last_burst", "past_end",
                 "past_peak", "run_peak")

    def __init__(self, bucket: int) -> None:
        super().__init__()
        self.bucket = bucket
        self.count = 0
        self.first_bucket = bucket
        #: The principal's own bursts (closed buckets of at least ``min_count``): the
        #: largest of the latest run of consecutive ones and that run's last bucket,
        #: the largest of the runs before it and their last bucket ...
        self.run_peak = 0
        self.last_burst = -1
        self.past_peak = 0
        self.past_end = -1
        #: ... and per hour of day (None: never burst): the largest burst of the
        #: latest occasion at that hour and its bucket, and the largest of an
        #: earlier day and its bucket.
        self.hours: list[tuple[int, int, int, int]] | None = None


@state_type("abuse.peer_rate_model")
class _ModelRates:
    """Recent closed per-principal bucket counts of one model (a ring) and the limit."""

    __slots__ = ("closed", "limit", "peer_q", "pos", "ring")

    def __init__(self) -> None:
        self.ring: list[float] = []
        self.pos = 0
        self.closed = 0
        self.limit = math.inf
        self.peer_q = math.nan


@state_type("abuse.peer_rate_model_bursts")
class _ModelBursts:
    """The largest burst (bucket of at least ``min_count``) of each of a
    model's recent bursting callers: principal -> [count, bucket] (at most
    :data:`_MAX_BURSTERS`, the longest quiet forgotten first)."""

    __slots__ = ("by",)

    def __init__(self) -> None:
        self.by: dict[str, list[int]] = {}


#: Bursting callers remembered per model for new principals' bursts.
_MAX_BURSTERS: Final = 64


def peer_limit(
    counts: list[float], quantile: float, ratio: float, floor: float
) -> tuple[float, float]:
    """(limit, peer quantile): ``max(floor, ratio * quantile of counts)``.

    >>> peer_limit([1, 2, 2, 3, 9], 0.5, 4.0, 5.0)
    (8.0, 2.0)
    """
    ordered = sorted(counts)
    q = ordered[min(int(quantile * len(ordered)), len(ordered) - 1)]
    return max(floor, ratio * q), float(q)


class PeerRateDetector(Detector):
    """Query rate per principal far above what the model's other callers send.

    Per (principal, model), requests are counted in event-time buckets of
    ``bucket_seconds``. Each closed bucket with at least one request adds its
    count (capped at the current limit, so a flood cannot raise its own bar) to
    a ring of the model's last ``peer_samples`` counts; every ``refresh``
    closed buckets the limit becomes ``max(min_count, peer_ratio * q)`` where q
    is the ring's ``peer_quantile``. The bucket in progress is judged as it
    fills, from the principal's first request on: no warm-up per principal,
    only ``min_samples`` closed buckets per model. One finding per principal and
    ``cooldown_seconds``.

    **Own bursts.** Scheduled callers (a nightly batch scorer) send far more in
    a minute than the daytime peers do, every night. A principal above the peer
    limit is not reported while its count stays within ``self_ratio`` times its
    own reference: the largest bucket it sent at this hour of day (this hour or
    the next or previous one, on an earlier day, within ``history_days``); and,
    while its own history is shorter than a day (cold start), the largest
    bucket of any of its earlier bursts that ended at least ``burst_gap_seconds``
    before. A burst is a closed bucket of at least ``min_count`` requests; a
    burst counts once it is over, so a flood never excuses itself. On day one,
    then: a principal's first burst is judged against the peers alone (a fresh
    key flooding is reported from its first minute), its later bursts of a
    similar size are not; from its second day on, a burst at an hour when it
    never burst before is judged against the peers again (``self_ratio: 0``
    turns own bursts off).

    **Other callers' bursts.** A *new* principal (first seen less than
    ``new_seconds`` ago, no run of its own bursts over yet) has no reference
    of its own, and is not judged against the daytime peers alone either: its
    count is also measured against the bursts the model's *other* callers made
    (the largest bucket of each, within ``history_days``, once over):
    within ``self_ratio`` times the largest, it is not reported. A scheduled
    scorer's first nightly job is one more burst of the size the model already
    takes from its other batch callers; a fresh key flooding beyond every
    burst the model has seen, or a fast extraction on a model without batch
    callers, is reported from its first minute as before. The first bursting
    caller of a new deployment has no such reference (the baseline bootstrap
    gives it one). ``new_seconds: 0`` turns this off.

    >>> from detectors.events import InferenceEvent
    >>> from detectors.findings import Source
    >>> det = PeerRateDetector()
    >>> def query(t, who):
    ...     ev = InferenceEvent(ts=t, model_id="m", request_id=str(t), principal=who,
    ...                         features=[0.0], prediction=0)
    ...     return det.process(ev, Source("ml.inference", 0, int(t * 10)))
    >>> [t for t in range(0, 3600, 2) if query(float(t), f"u{t % 40}")]  # 40 callers
    []
    >>> flood = [query(3600 + i / 5, "newcomer") for i in range(300)]  # 5 a second
    >>> next(i for i, f in enumerate(flood) if f)
    29
    """

    name: ClassVar[str] = "volume.peer_rate"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "models", "bursts")
    event_types: ClassVar[frozenset[str]] = frozenset({"inference"})

    def __init__(
        self,
        bucket_seconds: float = 60.0,
        peer_quantile: float = 0.99,
        peer_ratio: float = 4.0,
        min_count: int = 30,
        peer_samples: int = 2048,
        min_samples: int = 100,
        refresh: int = 64,
        cooldown_seconds: float = 3600.0,
        self_ratio: float = 2.0,
        history_days: float = 7.0,
        burst_gap_seconds: float = 3600.0,
        new_seconds: float = 3600.0,
        max_principals: int = 200_000,
    ) -> None:
        if bucket_seconds <= 0 or not 0 < peer_quantile < 1 or peer_ratio < 1:
            raise ValueError("bucket_seconds > 0, peer_quantile in (0, 1), peer_ratio >= 1")
        if self_ratio < 0 or history_days <= 0 or burst_gap_seconds < 0 or new_seconds < 0:
            raise ValueError("self_ratio >= 0, history_days > 0, burst_gap_seconds >= 0, "
                             "new_seconds >= 0")
        self.bucket_seconds = bucket_seconds
        self.peer_quantile = peer_quantile
        self.peer_ratio = peer_ratio
        self.min_count = min_count
        self.peer_samples = peer_samples
        self.min_samples = min_samples
        self.refresh = refresh
        self.cooldown_seconds = cooldown_seconds
        self.self_ratio = self_ratio
        self.history_days = history_days
        self.burst_gap_seconds = burst_gap_seconds
        self.new_seconds = new_seconds
        self.table: EntityTable[_PeerRate] = EntityTable(max_principals)
        self.models: EntityTable[_ModelRates] = EntityTable(1024)
        #: Per model, its callers' bursts (a checkpoint without it starts empty).
        self.bursts: EntityTable[_ModelBursts] = EntityTable(1024)

    def _close(self, m: _ModelRates, count: int) -> None:
        value = min(float(count), m.limit)
        if len(m.ring) < self.peer_samples:
            m.ring.append(value)
        else:
            m.ring[m.pos] = value
            m.pos = (m.pos + 1) % self.peer_samples
        m.closed += 1
        if m.closed >= self.min_samples and (m.closed % self.refresh == 0 or m.limit == math.inf):
            m.limit, m.peer_q = peer_limit(
                m.ring, self.peer_quantile, self.peer_ratio, float(self.min_count)
            )

    def _hour(self, bucket: int) -> int:
        return int((bucket * self.bucket_seconds) % 86_400 // 3_600)

    def _remember_burst(self, st: _PeerRate) -> None:
        """Keep the closed bucket ``st.bucket`` (``st.count`` requests) if it was a burst."""
        if st.count < self.min_count:
            return
        if st.last_burst >= 0 and st.bucket - st.last_burst > 1:  # a new run of bursts
            st.past_peak, st.past_end = max(st.past_peak, st.run_peak), st.last_burst
            st.run_peak = 0
        st.run_peak = max(st.run_peak, st.count)
        st.last_burst = st.bucket
        if st.hours is None:
            st.hours = [(0, -1, 0, -1)] * 24
        h = self._hour(st.bucket)
        peak, at, old_peak, old_at = st.hours[h]
        if at >= 0 and (st.bucket - at) * self.bucket_seconds < _SAME_OCCASION_S:
            st.hours[h] = (max(peak, st.count), st.bucket, old_peak, old_at)
            return
        # An occasion at this hour on another day: the previous one becomes the
        # older reference if it beats the one kept (or that one is too old).
        too_old = old_at < 0 or (st.bucket - old_at) * self.bucket_seconds \
            > self.history_days * 86_400
        if at >= 0 and (too_old or peak >= old_peak):
            old_peak, old_at = peak, at
        st.hours[h] = (st.count, st.bucket, old_peak, old_at)

    def _remember_model_burst(self, model: str, principal: str, count: int,
                              bucket: int) -> None:
        """The bucket in progress of a bursting principal, as it fills: it is a
        reference for others once two buckets later (its burst is over then)."""
        mb = self.bursts.get(model)
        by = (mb if mb is not None else self.bursts.touch(model, _ModelBursts)).by
        mine = by.get(principal)
        if mine is not None:
            mine[0], mine[1] = max(mine[0], count), bucket
            return
        if len(by) >= _MAX_BURSTERS:
            del by[min(by, key=lambda p: by[p][1])]
        by[principal] = [count, bucket]

    def others_reference(self, st: _PeerRate, model: str, principal: str,
                         bucket: int) -> int:
        """The largest burst of the model's other callers a *new* principal may lean
        on (0 if it is not new, or there is none)."""
        secs = self.bucket_seconds
        if self.new_seconds <= 0 or self.self_ratio <= 0 or st.past_end >= 0 \
                or (bucket - st.first_bucket) * secs >= self.new_seconds:
            return 0
        mb = self.bursts.get(model)
        if mb is None:
            return 0
        horizon = self.history_days * 86_400
        return max((count for who, (count, at) in mb.by.items()
                    if who != principal and bucket - at > 1
                    and (bucket - at) * secs <= horizon), default=0)

    def own_reference(self, st: _PeerRate, bucket: int) -> tuple[int, str]:
        """(largest own earlier burst this judgement may lean on, which rule gave it)."""
        if st.hours is None or self.self_ratio <= 0:
            return 0, "none"
        secs = self.bucket_seconds
        best, rule = 0, "none"
        h = self._hour(bucket)
        for dh in (-1, 0, 1):
            cur_peak, cur_at, old_peak, old_at = st.hours[(h + dh) % 24]
            for peak, at in ((cur_peak, cur_at), (old_peak, old_at)):
                age = (bucket - at) * secs
                if at >= 0 and _SAME_OCCASION_S <= age <= self.history_days * 86_400 \
                        and peak > best:
                    best, rule = peak, "hour_of_day"
        if (bucket - st.first_bucket) * secs >= 86_400:
            return best, rule
        gap = self.burst_gap_seconds
        # Runs of bursts that are over, ended at least ``gap`` before this bucket:
        # the latest run is over once a bucket without a burst followed it.
        for peak, end in ((st.run_peak, st.last_burst), (st.past_peak, st.past_end)):
            if end >= 0 and bucket - end > 1 and (bucket - end - 1) * secs >= gap \
                    and peak > best:
                best, rule = peak, "earlier_burst"
        return best, rule

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, InferenceEvent)
        ts = float(event.ts)
        bucket = int(ts // self.bucket_seconds)
        model = event.model_id
        m = self.models.get(model) or self.models.touch(model, _ModelRates)
        st = self.table.touch(f"{event.principal}\x1f{model}", lambda: _PeerRate(bucket))
        if bucket > st.bucket:
            if st.count:
                self._close(m, st.count)
                self._remember_burst(st)
                self.models.touch(model, _ModelRates)  # keep an active model recently used
            st.bucket, st.count = bucket, 0
        st.count += 1
        if st.count >= self.min_count and self.new_seconds > 0:
            self._remember_model_burst(model, event.principal, st.count, bucket)
        if st.count < m.limit or st.cooling_down(ts):
            return None
        own, rule = self.own_reference(st, bucket)
        if st.count <= self.self_ratio * own:
            return None  # in line with the principal's own bursts (at this hour)
        others = self.others_reference(st, model, event.principal, bucket)
        if st.count <= self.self_ratio * others:
            return None  # a new caller, in line with the model's other callers' bursts
        st.start_cooldown(ts, self.cooldown_seconds)
        ratio = st.count / max(m.peer_q, 1.0)
        return principal_finding(
            self.name,
            "denial_of_service",
            event,
            source,
            severity="high" if ratio >= 4 * self.peer_ratio else "medium",
            summary=(
                f"Principal sent {st.count} requests within {self.bucket_seconds:g}s, "
                f"{ratio:.0f}x what the model's busiest callers send "
                f"({self.peer_quantile:.0%} quantile {m.peer_q:g}): throttle or review it."
            ),
            evidence={
                "observed_count": st.count,
                "window_seconds": self.bucket_seconds,
                "peer_quantile": self.peer_quantile,
                "peer_quantile_count": m.peer_q,
                "threshold": round(m.limit, 3),
                "ratio": round(ratio, 2),
                "peer_windows": len(m.ring),
                "own_reference_count": own,
                "own_reference_rule": rule,
                # only when there was one (findings stay as before otherwise)
                **({"other_callers_burst_count": others} if others else {}),
                "own_history_seconds": (bucket - st.first_bucket) * self.bucket_seconds,
                "queries_examined": st.count,
            },
            atlas=ATLAS_VOLUME,
            id_key=f"{model}:bucket:{st.bucket}",
        )

    def stats(self) -> dict[str, float]:
        """Also the calibration sample sizes: closed buckets in the peer rings and
        callers (of the largest model), models calibrated, principals with own bursts."""
        out = super().stats()
        rings = [len(m.ring) for _, m in self.models.items()]
        out["calibration_peer_windows"] = max(rings, default=0)
        out["calibration_models"] = sum(1 for _, m in self.models.items()
                                        if m.limit != math.inf)
        out["calibration_principals_with_bursts"] = sum(
            1 for _, st in self.table.items() if st.hours is not None)
        callers = Counter(key.rpartition("\x1f")[2] for key in self.table)
        out["calibration_callers"] = max(callers.values(), default=0)
        out["calibration_bursting_callers"] = max(
            (len(b.by) for _, b in self.bursts.items()), default=0)
        return out
