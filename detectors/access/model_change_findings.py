"""The finding of :class:`~detectors.access.model_changes.ModelChangeOutsidePipelineDetector`.

A ``model_tampering`` finding: which rule the change broke (``no_run``,
``unknown_run``, ``unknown_orchestrator``, ``outside_run``), the run it named
if any, and the actor's own runs, in the summary and the evidence.
"""

from __future__ import annotations

import math
from typing import Final

from detectors.access.actor_runs import ActorRuns
from detectors.access.audit_fields import model_id_of
from detectors.context import PipelineRun
from detectors.events import AuditEvent
from detectors.findings import Entity, Finding, Severity, Source

__all__ = ["model_change_finding"]

_ATLAS_MODEL: Final = ["AML.T0018.000"]


def _context(
    st: ActorRuns, ts: float, run_id: str | None, run: PipelineRun | None, rule: str
) -> str:
    """Why no run accounts for the change, for the summary."""
    if rule == "unknown_run":
        return f"run id {run_id!r} was started by no pipeline run seen"
    if rule == "unknown_orchestrator" and run is not None:
        return (f"run {run_id!r} was started by {run.orchestrator}, which had started "
                f"only {run.prior_runs} runs before")
    if rule == "outside_run" and run is not None:
        return f"it falls outside run {run_id!r} of {run.orchestrator}"
    if not st.start > -math.inf:
        return "and has never run a pipeline"
    if st.end >= st.start:
        return f"but its last pipeline run ended {(ts - st.end) / 60:.0f} min earlier"
    return f"but its last pipeline run started {(ts - st.start) / 3600:.1f}h earlier"


def model_change_finding(
    detector: str,
    event: AuditEvent,
    source: Source,
    st: ActorRuns,
    ts: float,
    *,
    run_id: str | None,
    run: PipelineRun | None,
    rule: str,
    run_window_seconds: float,
) -> Finding:
    """A change of ``event.resource`` that no pipeline run accounts for (``rule``)."""
    action = event.action
    in_place = action == "model.update"
    severity: Severity = "critical" if in_place else "high"
    since = ts - st.start if st.start > -math.inf else None
    return Finding.build(
        detector=detector,
        kind="model_tampering",
        severity=severity,
        entity=Entity("principal", event.actor),
        model_id=model_id_of(event.resource),
        summary=(
            f"Principal {event.actor} ran {action} on {event.resource} outside any "
            f"pipeline run ({_context(st, ts, run_id, run, rule)}; runs are trusted for "
            f"{run_window_seconds / 3600:g}h)."
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
            "run_window_seconds": run_window_seconds,
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
