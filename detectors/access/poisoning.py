"""Poisoning and tampering precursors: who writes training data, changes models, deletes.

Partition scope: audit events are keyed by the actor, so per-actor state
(pipeline runs, delete habits) is exact. Per-dataset state (who usually writes
dataset X, how much) lives in the partition of each writer: a dataset written
by principals on several partitions has a partial history on each. A writer
is then judged only against the writers of its own partition; a partition on
which the dataset has no established history does not judge it (a missed
detection, never a false one).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import ClassVar, Final

from detectors.access._common import LogBaselines, is_dataset, is_model, model_id_of, verb_of
from detectors.base import Detector
from detectors.context import (
    MAX_RUN_ID_CHARS,
    ContextReader,
    ContextTable,
    PipelineRun,
    run_verdict,
)
from detectors.events import AuditEvent, Event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = ["DeletionDetector", "ModelChangeOutsidePipelineDetector", "TrainingDataWriteDetector"]

_ATLAS_POISON: Final = ["AML.T0020"]
_ATLAS_POISON_VOLUME: Final = ["AML.T0020", "AML.T0059"]
_ATLAS_MODEL: Final = ["AML.T0018.000"]
_WRITE_VERBS: Final = ("write", "append", "upload", "insert", "overwrite", "import", "put")


@state_type("access.training_dataset")
class _Dataset:
    __slots__ = (
        "base",
        "cooldown_until",
        "first_ts",
        "limits",
        "plain_writes",
        "run_writes",
        "sizes",
        "totals",
        "window",
        "windows",
        "writers",
        "writes",
    )

    def __init__(self, ts: float, window: int) -> None:
        self.writers: dict[str, int] = {}
        self.writes = 0
        #: Writes that carried a pipeline run id (the dataset is fed by pipelines).
        self.run_writes = 0
        #: Writes outside runs that were not reported (a reported one is no norm).
        self.plain_writes = 0
        #: Robust running centre of log1p(records) per write (usual write size).
        self.sizes = LogBaselines(1)
        self.first_ts = ts
        self.window = window
        self.totals = [0, 0]  # bytes, records written in the window
        self.base = LogBaselines(2)
        self.limits = [math.inf, math.inf]
        self.windows = 0
        self.cooldown_until = -math.inf


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

    def _close(self, st: _Dataset, window: int) -> None:
        if st.totals[0] or st.totals[1]:
            st.windows += 1
            st.limits = st.base.update(
                st.totals,
                self.alpha,
                self.warmup_windows,
                self.z_threshold,
                self.min_ratio,
                self.floors,
            )
        st.window = window
        st.totals = [0, 0]

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
            self._close(st, window)
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
            if st.windows >= self.warmup_windows and ts >= st.cooldown_until:
                for i in (0, 1):
                    if st.totals[i] > st.limits[i]:
                        st.cooldown_until = ts + self.cooldown_seconds
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



_RUN_END: Final = frozenset(
    {"end", "ended", "finished", "completed", "succeeded", "success", "failed", "done"}
)
_RUN_ID_KEYS: Final = ("run_id", "pipeline_run_id")
#: Run ids remembered per actor (to tie a change to its run by id).
_MAX_RUN_IDS: Final = 16


@state_type("access.model_change_runs")
class _Runs:
    __slots__ = ("cooldown", "end", "first_run_ts", "run_ids", "runs_started", "start")

    def __init__(self) -> None:
        self.start = -math.inf
        self.end = -math.inf
        self.run_ids: list[str] = []
        self.cooldown: dict[str, float] = {}
        self.runs_started = 0
        self.first_run_ts = math.inf


def _attr(attrs: dict[str, object] | None, keys: tuple[str, ...]) -> str | None:
    if not attrs:
        return None
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str | int) and value != "":
            return str(value)
    return None


def _run_id(attrs: dict[str, object] | None) -> str | None:
    run_id = _attr(attrs, _RUN_ID_KEYS)
    return run_id if run_id is not None and len(run_id) <= MAX_RUN_ID_CHARS else None


def _in_expected_run(context: ContextTable, attrs: dict[str, object] | None, ts: float) -> bool:
    """True if ``attrs`` name a published run that accounts for an action at ``ts``
    (the defaults of :class:`ModelChangeOutsidePipelineDetector`)."""
    run_id = _run_id(attrs)
    run = context.get_run(run_id) if run_id is not None else None
    return run is not None and run_verdict(run, ts, 2, 86400.0, 300.0, 900.0, 6 * 3600.0) is None


class ModelChangeOutsidePipelineDetector(ContextReader, Detector):
    """Changes to registered model artifacts that no pipeline run accounts for.

    A change is a successful ``model.update``, ``model.register`` or
    ``model.upload`` on a ``model:NAME[:VERSION]`` resource: each adds or
    replaces an artifact under a registered name. It is expected when:

    - the same actor has a successful audit ``pipeline.run`` that started at
      most ``run_window_seconds`` before (and did not end more than
      ``end_grace_seconds`` before the change; a run ends when its
      ``attributes.status`` says so), or the change carries
      ``attributes.run_id`` (or ``pipeline_run_id``) of one of the actor's
      recent runs (single-identity pipelines); or
    - the change carries the run id of a run another principal (an
      orchestrator) started, as the shared :class:`~detectors.context.ContextTable`
      tells (runs are published there by the instance that sees the
      orchestrator's ``pipeline.run`` events, on whatever partition or
      replica), the change falls inside that run (from ``start_skew_seconds``
      before its start to ``end_grace_seconds`` after its end, or
      ``run_window_seconds`` after its start while it has not ended), and the
      orchestrator is established: it had started ``min_orchestrator_runs``
      runs before this one, or it started its first run within
      ``orchestrator_warmup_seconds`` of the moment the detector began
      watching (cold start: the pipelines running when mlwatchd arrives are
      learnt, not reported).

    Anything else is reported as ``model_tampering`` (``evidence.rule``:
    ``no_run``, ``unknown_run``, ``unknown_orchestrator`` or ``outside_run``):
    ``critical`` for an in-place ``model.update`` of a version, ``high``
    otherwise. A change with a run id not (yet) in the table is held up to
    ``hold_seconds`` of event time (this partition's) before it is judged:
    the orchestrator's record may come from another replica that lags. One
    finding per actor and model per ``cooldown_seconds``.

    >>> from detectors.events import AuditEvent
    >>> from detectors.findings import Source
    >>> det = ModelChangeOutsidePipelineDetector()
    >>> def audit(t, actor, action, resource, **attributes):
    ...     ev = AuditEvent(ts=t, actor=actor, action=action, resource=resource,
    ...                     outcome="success", attributes=attributes or None)
    ...     return det.process(ev, Source("ml.audit", 0, int(t)))
    >>> audit(0, "svc-train", "pipeline.run", "pipeline:fraud-nightly", run_id="r1")
    >>> audit(3000, "svc-train", "model.register", "model:fraud:8") is None
    True
    >>> audit(3500, "svc-airflow", "pipeline.run", "pipeline:churn", run_id="c1")
    >>> audit(4000, "svc-trainer", "model.register", "model:churn:3", run_id="c1") is None
    True
    >>> found = audit(5000, "dev", "model.update", "model:fraud:8")
    >>> found[0].severity, found[0].model_id, found[0].evidence["rule"]
    ('critical', 'fraud', 'no_run')
    """

    name: ClassVar[str] = "access.model_change"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "first_ts", "clock", "held", "_context")
    event_types: ClassVar[frozenset[str]] = frozenset({"audit"})

    def __init__(
        self,
        run_window_seconds: float = 6 * 3600.0,
        end_grace_seconds: float = 900.0,
        start_skew_seconds: float = 300.0,
        cooldown_seconds: float = 3600.0,
        min_orchestrator_runs: int = 2,
        orchestrator_warmup_seconds: float = 86400.0,
        hold_seconds: float = 900.0,
        max_held: int = 10_000,
        change_actions: tuple[str, ...] = ("model.update", "model.register", "model.upload"),
        run_actions: tuple[str, ...] = ("pipeline.run",),
        max_principals: int = 100_000,
    ) -> None:
        if run_window_seconds <= 0 or hold_seconds < 0 or max_held < 0:
            raise ValueError("run_window_seconds > 0, hold_seconds >= 0, max_held >= 0")
        self.run_window_seconds = run_window_seconds
        self.end_grace_seconds = end_grace_seconds
        self.start_skew_seconds = start_skew_seconds
        self.cooldown_seconds = cooldown_seconds
        self.min_orchestrator_runs = min_orchestrator_runs
        self.orchestrator_warmup_seconds = orchestrator_warmup_seconds
        self.hold_seconds = hold_seconds
        self.max_held = max_held
        self.change_actions = frozenset(change_actions)
        self.run_actions = frozenset(run_actions)
        self.table: EntityTable[_Runs] = EntityTable(max_principals)
        self.first_ts: float | None = None
        self.clock = -math.inf
        #: Changes waiting for their run's record: (event, source, judge at).
        self.held: list[tuple[AuditEvent, Source, float]] = []
        self._init_context()

    # -- events -----------------------------------------------------------------

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, AuditEvent)
        ts: float = event.ts  # type: ignore[assignment]
        if self.first_ts is None:
            self.first_ts = ts
        found: list[Finding] = []
        if ts > self.clock:
            self.clock = ts
        if self.held:
            self._release(found)
        if event.outcome == "success":
            if event.action in self.run_actions:
                self._run_event(event, ts)
            elif event.action in self.change_actions and is_model(
                event.resource, event.resource_type
            ):
                self._change(event, source, ts, found, may_hold=True)
        return found or None

    def _run_event(self, event: AuditEvent, ts: float) -> None:
        st = self.table.touch(event.actor, _Runs)
        status = (_attr(event.attributes, ("status", "phase", "state")) or "start").lower()
        run_id = _run_id(event.attributes)
        context = self._context
        if status in _RUN_END:
            st.end = max(st.end, ts)
            if run_id is not None:
                known = context.get_run(run_id)
                if known is not None and known.orchestrator == event.actor:
                    context.put_run(replace(known, end_ts=ts))
            return
        if ts > st.start:
            st.start = ts
        prior = st.runs_started
        st.runs_started += 1
        st.first_run_ts = min(st.first_run_ts, ts)
        if run_id is not None:
            if run_id not in st.run_ids:
                st.run_ids = [*st.run_ids[-(_MAX_RUN_IDS - 1) :], run_id]
            assert self.first_ts is not None
            context.put_run(PipelineRun(
                run_id=run_id, orchestrator=event.actor, pipeline=event.resource,
                start_ts=ts, end_ts=None, prior_runs=prior,
                orchestrator_first_ts=st.first_run_ts, watch_start_ts=self.first_ts))

    def _own_run(self, st: _Runs, run_id: str | None, ts: float) -> bool:
        if run_id is not None and run_id in st.run_ids:
            return True
        in_window = st.start <= ts <= st.start + self.run_window_seconds
        ended = st.end >= st.start and ts > st.end + self.end_grace_seconds
        return in_window and not ended

    def _judge_run(self, run: PipelineRun, ts: float) -> str | None:
        """None if the change fits the run; else the rule it breaks."""
        return run_verdict(run, ts, self.min_orchestrator_runs,
                           self.orchestrator_warmup_seconds, self.start_skew_seconds,
                           self.end_grace_seconds, self.run_window_seconds)

    def _change(
        self, event: AuditEvent, source: Source, ts: float, found: list[Finding], may_hold: bool
    ) -> None:
        st = self.table.touch(event.actor, _Runs)
        run_id = _run_id(event.attributes)
        if self._own_run(st, run_id, ts):
            return
        run: PipelineRun | None = None
        if run_id is None:
            rule = "no_run"
        else:
            run = self._context.get_run(run_id)
            if run is None or run.start_ts is None:
                if may_hold and self.hold_seconds > 0:
                    if len(self.held) >= self.max_held:  # bounded: the oldest is judged now
                        old_event, old_source, _ = self.held.pop(0)
                        self._change(old_event, old_source, old_event.ts, found,  # type: ignore[arg-type]
                                     may_hold=False)
                    self.held.append((event, source, ts + self.hold_seconds))
                    return
                run, rule = None, "unknown_run"
            else:
                verdict = self._judge_run(run, ts)
                if verdict is None:
                    return
                rule = verdict
        finding = self._finding(event, source, st, ts, run_id, run, rule)
        if finding is not None:
            found.append(finding)

    def _release(self, found: list[Finding]) -> None:
        """Judge held changes whose run is now known or whose hold is over."""
        waiting: list[tuple[AuditEvent, Source, float]] = []
        for event, source, due in self.held:
            run_id = _run_id(event.attributes)
            run = self._context.get_run(run_id) if run_id is not None else None
            if (run is not None and run.start_ts is not None) or due <= self.clock:
                self._change(event, source, event.ts, found, may_hold=False)  # type: ignore[arg-type]
            else:
                waiting.append((event, source, due))
        self.held = waiting

    def _finding(
        self,
        event: AuditEvent,
        source: Source,
        st: _Runs,
        ts: float,
        run_id: str | None,
        run: PipelineRun | None,
        rule: str,
    ) -> Finding | None:
        action = event.action
        model = model_id_of(event.resource) or event.resource
        if ts < st.cooldown.get(model, -math.inf):
            return None
        if len(st.cooldown) >= _MAX_RUN_IDS:
            st.cooldown = {m: t for m, t in st.cooldown.items() if t > ts}
        st.cooldown[model] = ts + self.cooldown_seconds
        in_place = action == "model.update"
        severity: Severity = "critical" if in_place else "high"
        since = ts - st.start if st.start > -math.inf else None
        if rule == "unknown_run":
            context = f"run id {run_id!r} was started by no pipeline run seen"
        elif rule == "unknown_orchestrator" and run is not None:
            context = (f"run {run_id!r} was started by {run.orchestrator}, which had started "
                       f"only {run.prior_runs} runs before")
        elif rule == "outside_run" and run is not None:
            context = f"it falls outside run {run_id!r} of {run.orchestrator}"
        elif since is None:
            context = "and has never run a pipeline"
        elif st.end >= st.start:
            context = f"but its last pipeline run ended {(ts - st.end) / 60:.0f} min earlier"
        else:
            context = f"but its last pipeline run started {since / 3600:.1f}h earlier"
        return Finding.build(
            detector=self.name,
            kind="model_tampering",
            severity=severity,
            entity=Entity("principal", event.actor),
            model_id=model_id_of(event.resource),
            summary=(
                f"Principal {event.actor} ran {action} on {event.resource} outside any "
                f"pipeline run ({context}; runs are trusted for "
                f"{self.run_window_seconds / 3600:g}h)."
            ),
            evidence={
                "rule": rule,
                "action": action,
                "resource": event.resource,
                "run_id": run_id,
                "run_orchestrator": None if run is None else run.orchestrator,
                "run_start_ts": None if run is None else run.start_ts,
                "run_end_ts": None if run is None else run.end_ts,
                "last_run_start_age_seconds": None if since is None else round(since, 1),
                "last_run_ended": st.end >= st.start > -math.inf,
                "run_window_seconds": self.run_window_seconds,
                "known_run_ids": len(st.run_ids),
                "in_place_update": in_place,
                "bytes": event.bytes,
                "source_ip": event.source_ip,
                "user_agent": event.user_agent,
            },
            atlas=_ATLAS_MODEL,
            event_ts=ts,
            sources=[source],
        )



@state_type("access.deleter")
class _Deleter:
    __slots__ = ("base", "cooldown_until", "count", "deletes", "limit", "window", "windows")

    def __init__(self, window: int) -> None:
        self.window = window
        self.count = 0
        self.deletes = 0
        self.windows = 0
        self.base = LogBaselines(1)
        self.limit = math.inf
        self.cooldown_until = -math.inf


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
        if window > st.window:
            if st.count:
                st.windows += 1
                # Counts are integers: a limit of 19.999999 (float round-off) means 20.
                st.limit = st.base.update(
                    [st.count],
                    self.alpha,
                    self.warmup_windows,
                    self.z_threshold,
                    self.min_ratio,
                    (float(self.min_burst),),
                )[0]
                st.limit = float(math.floor(st.limit + 1e-6))
            st.window = window
            st.count = 0
        if window == st.window:
            st.count += 1
        st.deletes += 1
        if ts < st.cooldown_until:
            return None
        limit = st.limit if st.windows >= self.warmup_windows else float(self.min_burst)
        if first and ts - self.first_ts >= self.warmup_seconds:
            rule = "first_delete"
            severity: Severity = "medium"
        elif st.count > limit:
            rule = "burst"
            severity = "high"
        else:
            return None
        st.cooldown_until = ts + self.cooldown_seconds
        usual = st.base.usual()
        if rule == "first_delete":
            summary = (
                f"Principal {event.actor} deleted {resource}, its first delete in "
                f"{(ts - self.first_ts) / 86400:.1f} days watched."
            )
        else:
            summary = (
                f"Principal {event.actor} deleted {st.count} datasets or model versions within "
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
                    "deletes_in_window": st.count,
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

