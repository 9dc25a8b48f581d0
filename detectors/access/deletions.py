"""Deletes of datasets or model versions by an unexpected principal or in a burst.

Partition scope: audit events are keyed by the actor, so per-actor delete
habits are exact.
"""

from __future__ import annotations

import math
from typing import ClassVar

from detectors.access.audit_fields import (
    is_dataset,
    is_model,
    model_id_of,
    verb_of,
)
from detectors.access.baselines import WindowedBaseline
from detectors.base import Detector
from detectors.events import AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["DeletionDetector"]


@state_type("access.deleter")
class _Deleter(WindowedBaseline):
    __slots__ = ("deletes",)

    def __init__(self, window: int) -> None:
        super().__init__()
        self.init_window(1, window)
        self.deletes = 0


class DeletionDetector(Detector):
    """Deletes of datasets or model versions by an unexpected principal or in a burst.

    Per actor, successful deletes (verb ``delete``, ``purge``, ``remove``,
    ``drop``, ``destroy``) of dataset or model resources. Reported:

    - ``first_delete``: an actor that deleted nothing since the detector
      started, once the detector has watched ``warmup_seconds`` of events
      (retention jobs that delete daily are learnt and stay quiet);
    - ``burst``: deletes in the window in progress above the largest of
      ``min_burst`` and the actor's robust baseline (``z_threshold`` spreads,
      ``min_ratio`` times usual) over its active windows.

    Dataset deletes are ``data_poisoning`` (AML.T0059, Erode Dataset
    Integrity); model version deletes are ``model_tampering``. One finding
    per actor per ``cooldown_seconds``.

    >>> from detectors.events import AuditEvent
    >>> from detectors.findings import Source
    >>> det = DeletionDetector(warmup_seconds=86400)
    >>> def delete(t, actor, resource):
    ...     ev = AuditEvent(ts=t, actor=actor, action="dataset.delete", resource=resource,
    ...                     outcome="success")
    ...     return det.process(ev, Source("ml.audit", 0, int(t)))
    >>> [delete(d * 86400.0, "svc-retention", f"dataset:logs-{d}") for d in range(5)]
    [None, None, None, None, None]
    >>> delete(5 * 86400.0, "carol", "dataset:train-2026")[0].evidence["rule"]
    'first_delete'
    >>> burst = [delete(6 * 86400.0 + i, "svc-retention", f"dataset:x{i}") for i in range(30)]
    >>> next(i for i, f in enumerate(burst) if f), sum(1 for f in burst if f)
    (10, 1)
    """

    name: ClassVar[str] = "access.deletion"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "first_ts")
    #: 2: a deleter's window count and limit are ``totals[0]``/``limits[0]``
    #: (a :class:`~detectors.access.baselines.WindowedBaseline`).
    state_version: ClassVar[int] = 2
    event_types: ClassVar[frozenset[str]] = frozenset({"audit"})

    def __init__(
        self,
        window_seconds: float = 3600.0,
        warmup_seconds: float = 3 * 86400.0,
        min_burst: int = 10,
        alpha: float = 0.05,
        z_threshold: float = 5.0,
        min_ratio: float = 5.0,
        warmup_windows: int = 3,
        cooldown_seconds: float = 3600.0,
        delete_verbs: tuple[str, ...] = ("delete", "purge", "remove", "drop", "destroy"),
        max_principals: int = 100_000,
    ) -> None:
        if window_seconds <= 0 or not 0 < alpha < 1:
            raise ValueError("window_seconds must be > 0 and alpha in (0, 1)")
        self.window_seconds = window_seconds
        self.warmup_seconds = warmup_seconds
        self.min_burst = min_burst
        self.alpha = alpha
        self.z_threshold = z_threshold
        self.min_ratio = min_ratio
        self.warmup_windows = warmup_windows
        self.cooldown_seconds = cooldown_seconds
        self.delete_verbs = frozenset(delete_verbs)
        self.first_ts: float | None = None
        self.table: EntityTable[_Deleter] = EntityTable(max_principals)

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, AuditEvent)
        ts: float = event.ts  # type: ignore[assignment]
        if self.first_ts is None:
            self.first_ts = ts
        if event.outcome != "success" or verb_of(event.action) not in self.delete_verbs:
            return None
        resource = event.resource
        dataset = is_dataset(resource, event.resource_type)
        if not dataset and not is_model(resource, event.resource_type):
            return None
        window = int(ts // self.window_seconds)
        first = event.actor not in self.table
        st = self.table.touch(event.actor, lambda: _Deleter(window))
        if window > st.window and st.close_window(window, self.alpha, self.warmup_windows,
                                                  self.z_threshold, self.min_ratio,
                                                  (float(self.min_burst),)):
            # Counts are integers: a limit of 19.999999 (float round-off) means 20.
            st.limits[0] = float(math.floor(st.limits[0] + 1e-6))
        if window == st.window:
            st.totals[0] += 1
        st.deletes += 1
        if st.cooling_down(ts):
            return None
        limit = st.limits[0] if st.windows >= self.warmup_windows else float(self.min_burst)
        if first and ts - self.first_ts >= self.warmup_seconds:
            rule = "first_delete"
            severity: Severity = "medium"
        elif st.totals[0] > limit:
            rule = "burst"
            severity = "high"
        else:
            return None
        st.start_cooldown(ts, self.cooldown_seconds)
        usual = st.base.usual()
        if rule == "first_delete":
            summary = (
                f"Principal {event.actor} deleted {resource}, its first delete in "
                f"{(ts - self.first_ts) / 86400:.1f} days watched."
            )
        else:
            summary = (
                f"Principal {event.actor} deleted {st.totals[0]} datasets or model versions within "
                f"{self.window_seconds / 3600:g}h, above its threshold of {limit:.0f} "
                f"(usual {usual:.1f} per active window)."
            )
        return [
            Finding.build(
                detector=self.name,
                kind="data_poisoning" if dataset else "model_tampering",
                severity=severity,
                entity=Entity("principal", event.actor),
                model_id=model_id_of(resource),
                summary=summary,
                evidence={
                    "rule": rule,
                    "resource": resource,
                    "action": event.action,
                    "deletes_in_window": st.totals[0],
                    "window_seconds": self.window_seconds,
                    "threshold": round(limit, 3),
                    "baseline_usual": round(usual, 3),
                    "baseline_windows": st.windows,
                    "deletes_by_actor": st.deletes,
                    "watched_seconds": round(ts - self.first_ts, 1),
                },
                atlas=["AML.T0059"] if dataset else [],
                event_ts=ts,
                sources=[source],
                id_key=f"{rule}:{st.window}",
            )
        ]
