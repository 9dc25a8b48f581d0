"""Writes to training data by a principal that never wrote it, or far above usual volume.

Partition scope: per-dataset state (who usually writes dataset X, how much)
lives in the partition of each writer: a dataset written by principals on
several partitions has a partial history on each. A writer is then judged
only against the writers of its own partition; a partition on which the
dataset has no established history does not judge it (a missed detection,
never a false one).
"""

from __future__ import annotations

from typing import ClassVar, Final

from detectors.access.audit_fields import (
    is_dataset,
    verb_of,
)
from detectors.access.baselines import LogBaselines, WindowedBaseline
from detectors.access.pipeline_runs import in_expected_run as _in_expected_run
from detectors.base import Detector
from detectors.context import (
    ContextReader,
)
from detectors.events import AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["TrainingDataWriteDetector"]

_ATLAS_POISON: Final = ["AML.T0020"]
_ATLAS_POISON_VOLUME: Final = ["AML.T0020", "AML.T0059"]
_ATLAS_MODEL: Final = ["AML.T0018.000"]
_WRITE_VERBS: Final = ("write", "append", "upload", "insert", "overwrite", "import", "put")


@state_type("access.training_dataset")
class _Dataset(WindowedBaseline):
    __slots__ = (
        "first_ts",
        "plain_writes",
        "run_writes",
        "sizes",
        "writers",
        "writes",
    )

    def __init__(self, ts: float, window: int) -> None:
        super().__init__()
        self.writers: dict[str, int] = {}
        self.writes = 0
        #: Writes that carried a pipeline run id (the dataset is fed by pipelines).
        self.run_writes = 0
        #: Writes outside runs that were not reported (a reported one is no norm).
        self.plain_writes = 0
        #: Robust running centre of log1p(records) per write (usual write size).
        self.sizes = LogBaselines(1)
        self.first_ts = ts
        self.init_window(2, window)  # totals: bytes, records written in the window


class TrainingDataWriteDetector(ContextReader, Detector):
    """Writes to a dataset by a principal that never wrote it, or far above its usual volume.

    Per dataset (resources ``dataset:...`` or of type ``dataset``): the
    principals that wrote it and a robust log-space baseline of bytes and
    records written per window (active windows only). Reported, as
    ``data_poisoning``:

    - ``new_writer``: a successful write by a principal not among the
      dataset's writers, once the dataset is established (``min_writes``
      writes over at least ``warmup_seconds``). Datasets with ``max_writers``
      or more writers are shared scratch space and exempt from this rule, and
      so is a write that carries the run id of a pipeline run it falls in,
      started by an established orchestrator (the context table, as for
      ``access.model_change``): a pipeline's new worker account.
      Cold start: a dataset fed by pipelines (at least ``min_run_writes``
      earlier writes, at least ``run_share`` of them carrying a run id
      attribute) is established from its first pipeline writes, so a new
      writer writing outside any run (no run id) is reported from day one;
      at the dataset's usual write size or more it is ``high``.
    - ``volume``: bytes or records written in the window in progress above
      the largest of ``z_threshold`` robust spreads over usual, ``min_ratio``
      times usual and an absolute floor, after ``warmup_windows`` windows.

    One finding per dataset per rule per ``cooldown_seconds`` (a new writer is
    learnt after its first finding).

    >>> from detectors.events import AuditEvent
    >>> from detectors.findings import Source
    >>> det = TrainingDataWriteDetector(warmup_seconds=86400, warmup_windows=3)
    >>> def write(t, who, nbytes=50_000_000):
    ...     ev = AuditEvent(ts=t, actor=who, action="dataset.write", resource="dataset:train",
    ...                     outcome="success", bytes=nbytes, records=nbytes // 500)
    ...     return det.process(ev, Source("ml.audit", 0, int(t)))
    >>> [write(d * 86400.0, "svc-pipeline") for d in range(7)].count(None)
    7
    >>> write(7 * 86400.0 + 60, "intern")[0].evidence["rule"]
    'new_writer'
    >>> found = write(8 * 86400.0, "svc-pipeline", nbytes=2_000_000_000)
    >>> found[0].evidence["rule"], found[0].evidence["ratio_to_usual"]
    ('volume', 40.0)
    """

    name: ClassVar[str] = "access.training_write"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "_context")
    event_types: ClassVar[frozenset[str]] = frozenset({"audit"})

    def __init__(
        self,
        window_seconds: float = 3600.0,
        min_writes: int = 5,
        warmup_seconds: float = 2 * 86400.0,
        max_writers: int = 16,
        min_run_writes: int = 1,
        run_share: float = 0.9,
        run_id_keys: tuple[str, ...] = ("run_id", "pipeline_run_id"),
        alpha: float = 0.05,
        z_threshold: float = 5.0,
        min_ratio: float = 5.0,
        min_bytes: int = 50_000_000,
        min_records: int = 100_000,
        warmup_windows: int = 5,
        cooldown_seconds: float = 6 * 3600.0,
        write_verbs: tuple[str, ...] = _WRITE_VERBS,
        max_datasets: int = 100_000,
    ) -> None:
        if window_seconds <= 0 or not 0 < alpha < 1 or max_writers < 1:
            raise ValueError("window_seconds > 0, alpha in (0, 1), max_writers >= 1")
        self.window_seconds = window_seconds
        self.min_writes = min_writes
        self.warmup_seconds = warmup_seconds
        self.max_writers = max_writers
        self.min_run_writes = min_run_writes
        self.run_share = run_share
        self.run_id_keys = run_id_keys
        self.alpha = alpha
        self.z_threshold = z_threshold
        self.min_ratio = min_ratio
        self.floors = (float(min_bytes), float(min_records))
        self.warmup_windows = warmup_windows
        self.cooldown_seconds = cooldown_seconds
        self.write_verbs = frozenset(write_verbs)
        self.table: EntityTable[_Dataset] = EntityTable(max_datasets)
        self._init_context()

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, AuditEvent)
        if (
            event.outcome != "success"
            or verb_of(event.action) not in self.write_verbs
            or not is_dataset(event.resource, event.resource_type)
        ):
            return None
        ts: float = event.ts  # type: ignore[assignment]
        window = int(ts // self.window_seconds)
        st = self.table.touch(event.resource, lambda: _Dataset(ts, window))
        if window > st.window:
            st.close_window(window, self.alpha, self.warmup_windows, self.z_threshold,
                            self.min_ratio, self.floors)
        actor = event.actor
        found: list[Finding] = []
        writers = st.writers
        attrs = event.attributes
        in_run = attrs is not None and any(attrs.get(k) for k in self.run_id_keys)
        if actor not in writers:
            established = st.writes >= self.min_writes and ts - st.first_ts >= self.warmup_seconds
            # Cold start: a pipeline-fed dataset written outside any run by a
            # newcomer needs no days of history to be suspicious.
            pipeline_fed = (
                not in_run
                and st.run_writes >= self.min_run_writes
                and st.run_writes >= self.run_share * (st.run_writes + st.plain_writes)
            )
            if (
                (established or pipeline_fed)
                and len(writers) < self.max_writers
                and not _in_expected_run(self._context, event.attributes, ts)
            ):
                found.append(self._new_writer(event, source, st, ts, pipeline_fed))
            if len(writers) < self.max_writers:
                writers[actor] = 0
        if actor in writers:
            writers[actor] += 1
        st.writes += 1
        if in_run:
            st.run_writes += 1
        elif not found:
            st.plain_writes += 1
        if event.records:
            st.sizes.update([event.records], self.alpha, self.warmup_windows, 1.0, 1.0, (0.0,))
        if window == st.window:  # a late event is counted, but not in another window
            st.totals[0] += event.bytes or 0
            st.totals[1] += event.records or 0
            if st.windows >= self.warmup_windows and not st.cooling_down(ts):
                for i in (0, 1):
                    if st.totals[i] > st.limits[i]:
                        st.start_cooldown(ts, self.cooldown_seconds)
                        found.append(self._volume(event, source, st, i, ts))
                        break
        return found or None

    def _new_writer(
        self, event: AuditEvent, source: Source, st: _Dataset, ts: float, pipeline_fed: bool
    ) -> Finding:
        usual = sorted(st.writers, key=st.writers.__getitem__, reverse=True)[:5]
        usual_size = st.sizes.usual(0)
        records = event.records or 0
        at_volume = records > 0 and st.sizes.n > 0 and records >= usual_size
        severity: Severity = "high" if pipeline_fed and at_volume else "medium"
        outside = " outside any pipeline run" if pipeline_fed else ""
        return Finding.build(
            detector=self.name,
            kind="data_poisoning",
            severity=severity,
            entity=Entity("principal", event.actor),
            model_id=None,
            summary=(
                f"Principal {event.actor} wrote to {event.resource}{outside}, which it never "
                f"wrote before; its {st.writes} earlier writes over "
                f"{(ts - st.first_ts) / 86400:.1f} days came from {', '.join(usual)}."
            ),
            evidence={
                "rule": "new_writer",
                "resource": event.resource,
                "action": event.action,
                "usual_writers": usual,
                "writer_count": len(st.writers),
                "dataset_writes_seen": st.writes,
                "dataset_run_writes": st.run_writes,
                "outside_pipeline_run": pipeline_fed,
                "usual_write_records": round(usual_size, 1),
                "dataset_history_seconds": round(ts - st.first_ts, 1),
                "bytes": event.bytes,
                "records": event.records,
                "source_ip": event.source_ip,
            },
            atlas=_ATLAS_POISON,
            event_ts=ts,
            sources=[source],
        )

    def _volume(
        self, event: AuditEvent, source: Source, st: _Dataset, i: int, ts: float
    ) -> Finding:
        metric = ("bytes", "records")[i]
        observed = st.totals[i]
        usual = st.base.usual(i)
        ratio = observed / max(usual, 1.0)
        return Finding.build(
            detector=self.name,
            kind="data_poisoning",
            severity="high",
            entity=Entity("principal", event.actor),
            model_id=None,
            summary=(
                f"{observed:,} {metric} written to {event.resource} within "
                f"{self.window_seconds / 3600:g}h (last by {event.actor}), {ratio:.0f}x its "
                f"usual {usual:,.0f} per active window."
            ),
            evidence={
                "rule": "volume",
                "resource": event.resource,
                "metric": metric,
                "observed": observed,
                "window_seconds": self.window_seconds,
                "window_start": st.window * self.window_seconds,
                "baseline_usual": round(usual, 3),
                "baseline_spread_log": round(st.base.sd(i), 4),
                "baseline_windows": st.windows,
                "threshold": round(st.limits[i], 3),
                "ratio_to_usual": round(ratio, 2),
            },
            atlas=_ATLAS_POISON_VOLUME,
            event_ts=ts,
            sources=[source],
            id_key=f"volume:{event.resource}:{st.window}",
        )
