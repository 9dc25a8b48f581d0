"""Model registry changes made outside a pipeline run.

Partition scope: audit events are keyed by the actor, so the per-actor state
(the actor's pipeline runs) is exact; runs published by orchestrators reach
every partition through the context table.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import ClassVar

from detectors.access.actor_runs import ActorRuns
from detectors.access.audit_fields import is_model, model_id_of
from detectors.access.model_change_findings import model_change_finding
from detectors.access.pipeline_runs import RUN_END, attr
from detectors.access.pipeline_runs import run_id as run_id_of
from detectors.base import Detector
from detectors.context import ContextReader, PipelineRun, run_verdict
from detectors.events import AuditEvent, Event
from detectors.findings import Finding, Source
from detectors.state import EntityTable

__all__ = ["ModelChangeOutsidePipelineDetector"]


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
        self.table: EntityTable[ActorRuns] = EntityTable(max_principals)
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
        st = self.table.touch(event.actor, ActorRuns)
        status = (attr(event.attributes, ("status", "phase", "state")) or "start").lower()
        run_id = run_id_of(event.attributes)
        context = self._context
        if status in RUN_END:
            st.end = max(st.end, ts)
            if run_id is not None:
                known = context.get_run(run_id)
                if known is not None and known.orchestrator == event.actor:
                    context.put_run(replace(known, end_ts=ts))
            return
        prior = st.started(ts, run_id)
        if run_id is not None:
            assert self.first_ts is not None
            context.put_run(PipelineRun(
                run_id=run_id, orchestrator=event.actor, pipeline=event.resource,
                start_ts=ts, end_ts=None, prior_runs=prior,
                orchestrator_first_ts=st.first_run_ts, watch_start_ts=self.first_ts))

    def _judge_run(self, run: PipelineRun, ts: float) -> str | None:
        """None if the change fits the run; else the rule it breaks."""
        return run_verdict(run, ts, self.min_orchestrator_runs,
                           self.orchestrator_warmup_seconds, self.start_skew_seconds,
                           self.end_grace_seconds, self.run_window_seconds)

    def _change(
        self, event: AuditEvent, source: Source, ts: float, found: list[Finding], may_hold: bool
    ) -> None:
        st = self.table.touch(event.actor, ActorRuns)
        run_id = run_id_of(event.attributes)
        if st.own_run(run_id, ts, self.run_window_seconds, self.end_grace_seconds):
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
        model = model_id_of(event.resource) or event.resource
        if st.report_allowed(model, ts, self.cooldown_seconds):
            found.append(model_change_finding(
                self.name, event, source, st, ts, run_id=run_id, run=run, rule=rule,
                run_window_seconds=self.run_window_seconds))

    def _release(self, found: list[Finding]) -> None:
        """Judge held changes whose run is now known or whose hold is over."""
        waiting: list[tuple[AuditEvent, Source, float]] = []
        for event, source, due in self.held:
            run_id = run_id_of(event.attributes)
            run = self._context.get_run(run_id) if run_id is not None else None
            if (run is not None and run.start_ts is not None) or due <= self.clock:
                self._change(event, source, event.ts, found, may_hold=False)  # type: ignore[arg-type]
            else:
                waiting.append((event, source, due))
        self.held = waiting
