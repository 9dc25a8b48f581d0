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
from typing import ClassVar, Final

from detectors.base import Detector
from detectors.events import Event, InferenceEvent
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["PeerRateDetector", "PrincipalRateDetector"]

_ATLAS: Final = ["AML.T0029", "AML.T0034", "AML.T0040"]
#: Idle buckets replayed into the baseline at most (older history is ~forgotten anyway).
_MAX_IDLE_UPDATES: Final = 32


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
        severity: Severity = "high" if ratio >= 4 * self.min_ratio else "medium"
        return [
            Finding.build(
                detector=self.name,
                kind="denial_of_service",
                severity=severity,
                entity=Entity("principal", event.principal),
                model_id=event.model_id,
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
                atlas=_ATLAS,
                event_ts=event.ts,  # type: ignore[arg-type]
                sources=[source],
                id_key=f"bucket:{st.bucket}",
            )
        ]



@state_type("abuse.peer_rate_principal")
class _PeerRate:
    __slots__ = ("bucket", "count", "quiet_until")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        self.count = 0
        self.quiet_until = -math.inf


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
    state_fields: ClassVar[tuple[str, ...]] = ("table", "models")
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
        max_principals: int = 200_000,
    ) -> None:
        if bucket_seconds <= 0 or not 0 < peer_quantile < 1 or peer_ratio < 1:
            raise ValueError("bucket_seconds > 0, peer_quantile in (0, 1), peer_ratio >= 1")
        self.bucket_seconds = bucket_seconds
        self.peer_quantile = peer_quantile
        self.peer_ratio = peer_ratio
        self.min_count = min_count
        self.peer_samples = peer_samples
        self.min_samples = min_samples
        self.refresh = refresh
        self.cooldown_seconds = cooldown_seconds
        self.table: EntityTable[_PeerRate] = EntityTable(max_principals)
        self.models: EntityTable[_ModelRates] = EntityTable(1024)

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
                self.models.touch(model, _ModelRates)  # keep an active model recently used
            st.bucket, st.count = bucket, 0
        st.count += 1
        if st.count < m.limit or ts < st.quiet_until:
            return None
        st.quiet_until = ts + self.cooldown_seconds
        ratio = st.count / max(m.peer_q, 1.0)
        return [
            Finding.build(
                detector=self.name,
                kind="denial_of_service",
                severity="high" if ratio >= 4 * self.peer_ratio else "medium",
                entity=Entity("principal", event.principal),
                model_id=model,
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
                    "queries_examined": st.count,
                },
                atlas=_ATLAS,
                event_ts=ts,
                sources=[source],
                id_key=f"{model}:bucket:{st.bucket}",
            )
        ]

