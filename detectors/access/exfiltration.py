"""Exfiltration: read volume and breadth per principal, judged against itself and its peers.

Per-principal state only, so exact under the ``partition`` scope (audit and
access events are keyed by the principal). The peer baseline is the
population of principals on the same partition: since partitions hash
principal ids, that is a random sample of all principals, smaller when there
are many partitions.

The per-principal state and its rules' arithmetic are in
:mod:`~detectors.access.exfiltration_state`, the findings in
:mod:`~detectors.access.exfiltration_findings`.
"""

from __future__ import annotations

import math
from typing import ClassVar, Final

from detectors.access.audit_fields import (
    is_dataset,
    is_model,
    verb_of,
)
from detectors.access.baselines import LogHistogram
from detectors.access.exfiltration_findings import PeerView, slow_finding, volume_finding
from detectors.access.exfiltration_state import ReadWindow
from detectors.base import Detector
from detectors.events import AuditEvent, Event
from detectors.findings import Finding, Source
from detectors.state import EntityTable

__all__ = ["ExfiltrationDetector"]

#: Distinct action names memoised (the vocabulary is small; a flood is not memoised).
_MAX_ACTIONS: Final = 1024


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
        self.table: EntityTable[ReadWindow] = EntityTable(max_principals)

    def _close(self, st: ReadWindow, window: int) -> None:
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
            st.remember_breadth()
        st.roll_day(int(window * self.window_seconds // 86400), alpha=self.alpha,
                    warmup=self.warmup_windows, z=self.z_threshold, slow_ratio=self.slow_ratio,
                    slow_min_days=self.slow_min_days, slow_min_new=self.slow_min_new,
                    breadth_factor=self.breadth_factor)
        st.next_window()

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
        st = self.table.touch(event.actor, lambda: ReadWindow(window, ts))
        if window != st.window:
            self._close(st, window)
        resource = event.resource
        model = resource if is_model(resource, event.resource_type) else None
        dataset = resource if model is None and is_dataset(resource, event.resource_type) else None
        st.count(event.bytes or 0, event.records or 0, model, dataset)
        if st.cooling_down(ts):
            return None
        if st.slow_day():
            st.start_cooldown(ts, self.cooldown_seconds)
            st.day_flagged = True
            return [slow_finding(self.name, event, source, st, ts)]
        if st.judge_gen != self.peer_gen:
            st.derive(self.peer_gen, self.peer_floor, self.peer_limits,
                      warmup=self.warmup_windows, own_min=self.own_min_windows,
                      short_peer_factor=self.short_peer_factor,
                      breadth_factor=self.breadth_factor)
        totals, limits = st.totals, st.judge
        if (
            totals[0] > limits[0]
            or totals[1] > limits[1]
            or totals[2] > limits[2]
            or totals[3] > limits[3]
        ):
            warm = st.windows >= self.warmup_windows
            i = st.over_limit(warm, self.single_factor)
            if i is not None:
                return [self._finding(event, source, st, i, warm, ts)]
        return None

    def _finding(
        self, event: AuditEvent, source: Source, st: ReadWindow, i: int, warm: bool, ts: float
    ) -> Finding:
        st.start_cooldown(ts, self.cooldown_seconds)
        st.day_flagged = True
        peer = PeerView(
            quantile=self.peer_quantile,
            value=self.peers[i].quantile(self.peer_quantile),
            floor=self.peer_floor[i],
            limit=self.peer_limits[i],
            factor=self.peer_factor,
        )
        return volume_finding(self.name, event, source, st, i, warm=warm,
                              own_min_windows=self.own_min_windows,
                              window_seconds=self.window_seconds, peer=peer, ts=ts)
