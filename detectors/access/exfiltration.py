"""Exfiltration: read volume and breadth per principal, judged against itself and its peers.

Per-principal state only, so exact under the ``partition`` scope (audit and
access events are keyed by the principal). The peer baseline is the
population of principals on the same partition: since partitions hash
principal ids, that is a random sample of all principals, smaller when there
are many partitions.

(About 470 lines, over the ~400 of other modules: one detector whose three
rules (own baseline, peers, low-and-slow daily volume) judge the same window
state; split, each part would need the others' internals.)
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from detectors.access.audit_fields import (
    is_dataset,
    is_model,
    model_id_of,
    verb_of,
)
from detectors.access.baselines import LogBaselines, LogHistogram, WindowedBaseline
from detectors.base import Detector
from detectors.events import AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["ExfiltrationDetector"]

_ATLAS_EXFIL: Final = ["AML.T0025"]
_ATLAS_MODEL_EXFIL: Final = ["AML.T0025", "AML.T0035"]
#: Distinct resources remembered per window (breadth beyond this is capped).
_MAX_DISTINCT: Final = 256
#: Resources remembered per principal as ever read (its breadth).
_MAX_KNOWN: Final = 1024
#: Distinct action names memoised (the vocabulary is small; a flood is not memoised).
_MAX_ACTIONS: Final = 1024

#: (metric, evidence unit) judged per window; the order is the report order.
_METRICS: Final = ("bytes", "records", "datasets", "models")


@state_type("access.exfiltration_window")
class _Window(WindowedBaseline):
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


class ExfiltrationDetector(Detector):
    """Data read or downloaded by a principal far above its own baseline and its peers.

    Per principal and per event-time window (an hour by default) four totals
    are kept: bytes and records read or downloaded (actions whose verb is
    ``read``, ``download``, ``export``, ``query`` or ``copy``), distinct
    datasets read, and distinct model versions downloaded (bulk model
    download). A closed window that had reads updates a robust EWMA baseline
    in log space of each total (only active windows count, so nights and
    weekends do not drag "usual" to zero). The window in progress is judged as
    it fills, so exfiltration is reported while it happens.

    A total is unusual when it exceeds the largest of ``z`` robust spreads
    above the principal's usual, ``min_ratio`` times its usual, and floors
    relative to the population and to the principal: the peers'
    ``peer_quantile`` window (what 1 in 100 active windows of the population
    reaches) and, for distinct datasets and model versions, ``breadth_factor``
    times how many it has ever read or downloaded. There are no absolute
    floors by default (``min_*`` add them, 0 = none): they fit one deployment.

    Cold start: from ``own_min_windows`` active windows on (one by default, so
    from the first day) a principal is judged on its own short history and
    above ``short_peer_factor`` times the population floor; before that,
    against ``peer_factor`` times the peers' quantile. Until warm, a volume
    read from one resource must clear ``single_factor`` times its limit (a
    heavy reader's one big read is common; a theft spans resources). A
    service account whose
    steady nightly read dwarfs every human's is therefore quiet from its
    second night. The peer
    population is every closed window on the partition (one in four once it
    holds ``4 * peer_min_windows``); until it holds ``peer_min_windows``
    windows nothing is judged on peers. The peer percentile also raises the
    severity.

    Low and slow (``rule: low_and_slow``): per UTC day, bytes read above
    ``slow_ratio`` times the principal's usual active day, across at least
    ``slow_min_new`` datasets it never read before (and ``breadth_factor``
    times the number it ever read), once it has ``slow_min_days`` active days:
    an hour at a time it looks ordinary. One
    finding per principal per ``cooldown_seconds``.

    >>> from detectors.events import AuditEvent
    >>> from detectors.findings import Source
    >>> det = ExfiltrationDetector(warmup_windows=5)
    >>> def read(t, nbytes, ds="dataset:sales"):
    ...     ev = AuditEvent(ts=t, actor="bob", action="dataset.read", resource=ds,
    ...                     outcome="success", bytes=nbytes, records=nbytes // 1000)
    ...     return det.process(ev, Source("ml.audit", 0, int(t)))
    >>> [read(h * 3600.0 + 60, 20_000_000) for h in range(30)].count(None)
    30
    >>> hits = [read(30 * 3600.0 + 60 + i, 400_000_000) for i in range(40)]
    >>> next(i for i, f in enumerate(hits) if f), hits[0][0].evidence["ratio_to_usual"]
    (0, 20.0)
    >>> sum(1 for f in hits if f)  # one finding per cooldown, not one per read
    1
    """

    name: ClassVar[str] = "access.exfiltration"
    state_fields: ClassVar[tuple[str, ...]] = (
        "table", "peers", "closes", "peer_floor", "peer_limits", "peer_gen")
    event_types: ClassVar[frozenset[str]] = frozenset({"audit"})

    def __init__(
        self,
        window_seconds: float = 3600.0,
        alpha: float = 0.03,
        z_threshold: float = 5.0,
        min_ratio: float = 10.0,
        min_bytes: int = 0,
        min_records: int = 0,
        min_datasets: int = 0,
        min_models: int = 0,
        warmup_windows: int = 20,
        peer_quantile: float = 0.99,
        peer_factor: float = 5.0,
        peer_min_windows: int = 30,
        own_min_windows: int = 1,
        breadth_factor: float = 2.0,
        short_peer_factor: float = 2.0,
        single_factor: float = 5.0,
        breadth_min_ratio: float = 1.0,
        slow_ratio: float = 3.0,
        slow_min_new: int = 5,
        slow_min_days: int = 2,
        cooldown_seconds: float = 6 * 3600.0,
        read_verbs: tuple[str, ...] = ("read", "download", "export", "query", "copy"),
        max_principals: int = 100_000,
    ) -> None:
        if window_seconds <= 0 or not 0 < alpha < 1 or not 0 < peer_quantile < 1:
            raise ValueError("window_seconds must be > 0, alpha and peer_quantile in (0, 1)")
        self.window_seconds = window_seconds
        self.alpha = alpha
        self.z_threshold = z_threshold
        self.min_ratio = min_ratio
        self.floors = (float(min_bytes), float(min_records), float(min_datasets), float(min_models))
        self.warmup_windows = warmup_windows
        self.peer_quantile = peer_quantile
        self.peer_factor = peer_factor
        self.peer_min_windows = peer_min_windows
        self.own_min_windows = own_min_windows
        self.breadth_factor = breadth_factor
        self.short_peer_factor = short_peer_factor
        self.single_factor = single_factor
        self.slow_ratio = slow_ratio
        self.slow_min_new = slow_min_new
        self.slow_min_days = slow_min_days
        # Counts of distinct resources are small: "ten times usual" with usual
        # taken as at least 1 would be a fixed floor of ten; their spread judges.
        self.ratios = (min_ratio, min_ratio, breadth_min_ratio, breadth_min_ratio)
        #: The population's quantile per metric (inf until peer_min_windows).
        self.peer_floor = [math.inf, math.inf, math.inf, math.inf]
        #: Bumped whenever peer quantiles are refreshed (principals re-derive limits).
        self.peer_gen = 0
        self.cooldown_seconds = cooldown_seconds
        self.read_verbs = frozenset(read_verbs)
        self.peers = (LogHistogram(), LogHistogram(), LogHistogram(), LogHistogram())
        self.peer_limits = [math.inf, math.inf, math.inf, math.inf]
        self.closes = 0
        self._is_read: dict[str, bool] = {}  # action -> is a read (memo)
        self.table: EntityTable[_Window] = EntityTable(max_principals)

    def _close(self, st: _Window, window: int) -> None:
        """Fold a finished window with reads into the baselines; refresh limits."""
        totals = st.totals
        if st.close_window(window, self.alpha, self.warmup_windows, self.z_threshold,
                           self.ratios, self.floors):
            self.closes += 1
            # Every closed window joins the peer population until it is large
            # (a new deployment needs its peers on day one), then one in four;
            # quantiles are refreshed every 8 closes at first, then every 32:
            # they move slowly, and a close is the costly part of this detector.
            young = self.peers[0].count < 4 * self.peer_min_windows
            if young or self.closes % 4 == 0:
                for peer, total in zip(self.peers, totals, strict=True):
                    peer.add(total)
            if (
                self.closes % (8 if young else 32) == 0
                and self.peers[0].count >= self.peer_min_windows
            ):
                q = self.peer_quantile
                self.peer_floor = [p.quantile(q) for p in self.peers]
                self.peer_limits = [
                    max(self.peer_factor * pq, f)
                    for pq, f in zip(self.peer_floor, self.floors, strict=True)
                ]
                self.peer_gen += 1
            for ds in st.datasets:
                if len(st.known_datasets) >= _MAX_KNOWN:
                    break
                st.known_datasets.add(ds)
            for m in st.models:
                if len(st.known_models) >= _MAX_KNOWN:
                    break
                st.known_models.add(m)
        day = int(window * self.window_seconds // 86400)
        if day != st.day:
            if st.day_bytes:
                st.days += 1
                st.day_base.update([st.day_bytes], self.alpha, self.warmup_windows,
                                   self.z_threshold, self.slow_ratio, (0.0,))
                # What today must both exceed: a multiple of the usual day's
                # volume, and a count of never-read datasets relative to the
                # principal's breadth (a stable reader touches few new ones).
                # Until slow_min_days are seen, breadth is still being
                # discovered (a first partial day knows few datasets): no rule.
                st.day_limits = (
                    self.slow_ratio * max(st.day_base.usual(0), 1.0)
                    if st.days >= self.slow_min_days
                    else math.inf,
                    max(float(self.slow_min_new), self.breadth_factor * len(st.known_datasets)),
                )
            st.day = day
            st.day_flagged = False
            st.day_bytes = 0
            st.day_new = set()
        st.judge_gen = -1
        st.datasets = set()
        st.models = set()

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, AuditEvent)
        if event.outcome != "success":
            return None
        action = event.action
        is_read = self._is_read.get(action)
        if is_read is None:
            is_read = verb_of(action) in self.read_verbs
            if len(self._is_read) < _MAX_ACTIONS:
                self._is_read[action] = is_read
        if not is_read:
            return None
        ts: float = event.ts  # type: ignore[assignment]
        window = int(ts // self.window_seconds)
        st = self.table.touch(event.actor, lambda: _Window(window, ts))
        if window != st.window:
            self._close(st, window)
        totals = st.totals
        nbytes = event.bytes or 0
        totals[0] += nbytes
        totals[1] += event.records or 0
        st.day_bytes += nbytes
        resource = event.resource
        if is_model(resource, event.resource_type):
            models = st.models
            if resource not in models and len(models) < _MAX_DISTINCT:
                models.add(resource)
                totals[3] = len(models)
        elif is_dataset(resource, event.resource_type):
            datasets = st.datasets
            if resource not in datasets and len(datasets) < _MAX_DISTINCT:
                datasets.add(resource)
                totals[2] = len(datasets)
                if resource not in st.known_datasets and len(st.day_new) < _MAX_DISTINCT:
                    st.day_new.add(resource)
        if st.cooling_down(ts):
            return None
        if (
            st.day_bytes > st.day_limits[0]
            and len(st.day_new) >= st.day_limits[1]
            and not st.day_flagged
        ):
            return self._slow_finding(event, source, st, ts)
        if st.judge_gen != self.peer_gen:
            self._derive(st)
        limits = st.judge
        if (
            totals[0] > limits[0]
            or totals[1] > limits[1]
            or totals[2] > limits[2]
            or totals[3] > limits[3]
        ):
            warm = st.windows >= self.warmup_windows
            # Without a full history, one big read of one resource is how a
            # heavy user's day looks as often as a theft: the volume must then
            # clear single_factor times the limit; spread over several, not.
            single = not warm and totals[2] + totals[3] < 2
            for i in range(4):
                if totals[i] > limits[i] and not (
                    single and i < 2 and totals[i] <= self.single_factor * limits[i]
                ):
                    return self._finding(event, source, st, i, warm, ts)
        return None

    def _slow_finding(
        self, event: AuditEvent, source: Source, st: _Window, ts: float
    ) -> list[Finding]:
        st.start_cooldown(ts, self.cooldown_seconds)
        st.day_flagged = True
        usual = st.day_base.usual(0)
        new = len(st.day_new)
        return [
            Finding.build(
                detector=self.name,
                kind="exfiltration",
                severity="medium",
                entity=Entity("principal", event.actor),
                model_id=None,
                summary=(
                    f"Principal {event.actor} read {st.day_bytes:,} bytes today, "
                    f"{st.day_bytes / max(usual, 1.0):.1f}x its usual day of {usual:,.0f}, "
                    f"across {new} datasets it never read before (it had read "
                    f"{len(st.known_datasets)})."
                ),
                evidence={
                    "rule": "low_and_slow",
                    "metric": "daily_bytes",
                    "observed": st.day_bytes,
                    "day_start": st.day * 86400,
                    "baseline_usual": round(usual, 3),
                    "baseline_days": st.days,
                    "threshold": round(st.day_limits[0], 3),
                    "ratio_to_usual": round(st.day_bytes / max(usual, 1.0), 2),
                    "never_read_datasets": new,
                    "never_read_threshold": st.day_limits[1],
                    "known_breadth": len(st.known_datasets),
                    "last_resource": event.resource,
                },
                atlas=_ATLAS_EXFIL,
                event_ts=ts,
                sources=[source],
                id_key=f"day:{st.day}",
            )
        ]

    def _derive(self, st: _Window) -> None:
        """The limits a principal's window is judged against (once per window/peer refresh).

        With some history of its own, its own limits, never below the
        population's quantile (a short history needs the population; a full
        one is judged without while the population is too small) nor, for
        breadth, ``breadth_factor`` times what it has ever touched; with no
        history, ``peer_factor`` times the population.
        """
        st.judge_gen = self.peer_gen
        if st.windows >= self.warmup_windows:
            # A long history of its own stands even without a population yet.
            judge = [
                max(own, pop if pop < math.inf else 0.0)
                for own, pop in zip(st.limits, self.peer_floor, strict=True)
            ]
        elif st.windows >= self.own_min_windows:
            # A few windows say little about a principal's range (an engineer's
            # first model download dwarfs its first reads): a margin over peers.
            f = self.short_peer_factor
            judge = [max(own, f * pop) for own, pop in zip(st.limits, self.peer_floor, strict=True)]
        else:
            judge = list(self.peer_limits)
        f = self.breadth_factor
        judge[2] = max(judge[2], f * len(st.known_datasets))
        judge[3] = max(judge[3], f * len(st.known_models))
        st.judge = judge

    def _finding(
        self, event: AuditEvent, source: Source, st: _Window, i: int, warm: bool, ts: float
    ) -> list[Finding]:
        st.start_cooldown(ts, self.cooldown_seconds)
        st.day_flagged = True
        metric = _METRICS[i]
        observed = st.totals[i]
        usual = st.base.usual(i)
        peer_q = self.peers[i].quantile(self.peer_quantile)
        above_peers = observed > self.peer_limits[i]
        ratio = observed / max(usual, 1.0)
        severity: Severity = "high" if above_peers and (not warm or ratio >= 50) else "medium"
        what = {
            "bytes": "bytes read",
            "records": "records read",
            "datasets": "distinct datasets read",
            "models": "distinct model versions downloaded",
        }[metric]
        if warm:
            versus = f"{ratio:.0f}x its usual {usual:,.0f} per active window"
        elif st.windows >= self.own_min_windows:
            versus = (
                f"{ratio:.0f}x its usual {usual:,.0f} over its first {st.windows} active "
                f"windows, and above the peers' p{self.peer_quantile * 100:g} of {peer_q:,.0f}"
            )
        else:
            versus = (
                f"with no history of its own, above {self.peer_factor:g}x "
                f"the peers' p{self.peer_quantile * 100:g} of {peer_q:,.0f}"
            )
        model_id = model_id_of(event.resource) if i == 3 else None
        return [
            Finding.build(
                detector=self.name,
                kind="exfiltration",
                severity=severity,
                entity=Entity("principal", event.actor),
                model_id=model_id,
                summary=(
                    f"Principal {event.actor} reached {observed:,} {what} within "
                    f"{self.window_seconds / 3600:g}h, {versus}."
                ),
                evidence={
                    "metric": metric,
                    "observed": observed,
                    "window_seconds": self.window_seconds,
                    "window_start": st.window * self.window_seconds,
                    "baseline_usual": round(usual, 3),
                    "baseline_spread_log": round(st.base.sd(i), 4),
                    "baseline_windows": st.windows,
                    "threshold": round(st.judge[i], 3),
                    "own_threshold": round(st.limits[i], 3),
                    "population_floor": self.peer_floor[i],
                    "known_breadth": len(st.known_models if i == 3 else st.known_datasets),
                    "ratio_to_usual": round(ratio, 2),
                    "peer_quantile": self.peer_quantile,
                    "peer_value": peer_q,
                    "above_peers": above_peers,
                    "totals": dict(zip(_METRICS, st.totals, strict=True)),
                    "last_resource": event.resource,
                },
                atlas=_ATLAS_MODEL_EXFIL if i == 3 else _ATLAS_EXFIL,
                event_ts=ts,
                sources=[source],
                id_key=f"window:{st.window}",
            )
        ]
