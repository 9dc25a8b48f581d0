"""The pipeline runs one actor started: per-actor state of the model change detector.

:class:`ActorRuns` remembers when the actor's last run started and ended, its
recent run ids, and, per model, until when a finding about it stays quiet.
"""

from __future__ import annotations

import math

from detectors.access.pipeline_runs import MAX_RUN_IDS
from detectors.state_codec import state_type

__all__ = ["ActorRuns"]


@state_type("access.model_change_runs")
class ActorRuns:
    """One actor's pipeline runs, for
    :class:`~detectors.access.model_changes.ModelChangeOutsidePipelineDetector`.

    The cooldown is per model, so it is a dict of its own rather than a
    :class:`~detectors.state.Cooldown` (one deadline per entity).

    >>> runs = ActorRuns()
    >>> runs.started(100.0, "r1"), runs.own_run(None, 200.0, 3600.0, 900.0)
    (0, True)
    >>> runs.report_allowed("fraud", 200.0, 60.0), runs.report_allowed("fraud", 250.0, 60.0)
    (True, False)
    """

    __slots__ = ("cooldown", "end", "first_run_ts", "run_ids", "runs_started", "start")

    def __init__(self) -> None:
        self.start = -math.inf
        self.end = -math.inf
        self.run_ids: list[str] = []
        self.cooldown: dict[str, float] = {}
        self.runs_started = 0
        self.first_run_ts = math.inf

    def started(self, ts: float, run_id: str | None) -> int:
        """Record a run started at ``ts``; the number of runs started before it."""
        if ts > self.start:
            self.start = ts
        prior = self.runs_started
        self.runs_started += 1
        self.first_run_ts = min(self.first_run_ts, ts)
        if run_id is not None and run_id not in self.run_ids:
            self.run_ids = [*self.run_ids[-(MAX_RUN_IDS - 1) :], run_id]
        return prior

    def own_run(
        self, run_id: str | None, ts: float, run_window_seconds: float, end_grace_seconds: float
    ) -> bool:
        """True if one of the actor's own runs accounts for a change at ``ts``."""
        if run_id is not None and run_id in self.run_ids:
            return True
        in_window = self.start <= ts <= self.start + run_window_seconds
        ended = self.end >= self.start and ts > self.end + end_grace_seconds
        return in_window and not ended

    def report_allowed(self, model: str, ts: float, seconds: float) -> bool:
        """False while findings about ``model`` are quiet; else True, and quiet them
        for ``seconds`` from ``ts`` (at most MAX_RUN_IDS models remembered live)."""
        if ts < self.cooldown.get(model, -math.inf):
            return False
        if len(self.cooldown) >= MAX_RUN_IDS:
            self.cooldown = {m: t for m, t in self.cooldown.items() if t > ts}
        self.cooldown[model] = ts + seconds
        return True
