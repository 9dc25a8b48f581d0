"""access.model_change with pipeline runs that span identities (the shared context table).

An orchestrator writes ``pipeline.run`` start/end with a run id; a trainer
(another principal, on another partition) changes the model under that run
id. The run is visible to the trainer's detector instance only through the
context table.
"""

from __future__ import annotations

from typing import Any

from detectors.access.model_changes import ModelChangeOutsidePipelineDetector
from detectors.access.training_writes import TrainingDataWriteDetector
from detectors.context import InMemoryContextTable
from detectors.events import AuditEvent
from detectors.findings import Finding, Source
from detectors.pipeline import DetectorSpec, Pipeline

DAY = 86400.0
HOUR = 3600.0


def audit(t: float, actor: str, action: str, resource: str, **attributes: Any) -> AuditEvent:
    return AuditEvent(ts=t, actor=actor, action=action, resource=resource, outcome="success",
                      attributes=attributes or None)


class TwoPartitions:
    """Two instances (orchestrator's and trainer's partitions) sharing one table."""

    def __init__(self, **params: Any) -> None:
        self.table = InMemoryContextTable()
        self.orch = ModelChangeOutsidePipelineDetector(**params)
        self.work = ModelChangeOutsidePipelineDetector(**params)
        self.orch.bind_context(self.table)
        self.work.bind_context(self.table)
        self.offset = 0

    def feed(self, det: ModelChangeOutsidePipelineDetector, ev: AuditEvent) -> list[Finding]:
        self.offset += 1
        return det.process(ev, Source("ml.audit", 0 if det is self.orch else 1,
                                      self.offset)) or []

    def run(self, t: float, run_id: str, orchestrator: str = "svc-airflow") -> None:
        self.feed(self.orch, audit(t, orchestrator, "pipeline.run", "pipeline:p",
                                   run_id=run_id, phase="start"))

    def end(self, t: float, run_id: str, orchestrator: str = "svc-airflow") -> None:
        self.feed(self.orch, audit(t, orchestrator, "pipeline.run", "pipeline:p",
                                   run_id=run_id, phase="end", status="success"))

    def update(self, t: float, run_id: str | None, who: str = "svc-trainer") -> list[Finding]:
        attrs = {"pipeline_run_id": run_id} if run_id is not None else {}
        return self.feed(self.work, audit(t, who, "model.update", "model:fraud:3", **attrs))


    def tick(self, t: float) -> list[Finding]:
        """An unrelated event on the trainer's partition: its event time moves on."""
        return self.feed(self.work, audit(t, "svc-trainer", "dataset.read", "dataset:x"))


def scheduled_days(p: TwoPartitions, days: int, per_day: int = 4) -> list[Finding]:
    found: list[Finding] = []
    for d in range(days):
        for r in range(per_day):
            t = d * DAY + r * 6 * HOUR
            rid = f"fraud-{d}-{r}"
            p.run(t, rid)
            found += p.update(t + 1800, rid)
            p.end(t + 1900, rid)
    return found


def test_cross_actor_pipeline_runs_raise_no_finding() -> None:
    p = TwoPartitions()
    assert scheduled_days(p, 4) == []


def test_without_the_shared_table_each_cross_actor_update_is_tampering() -> None:
    # The mechanism under test: the same traffic with unshared tables fires.
    orch, work = ModelChangeOutsidePipelineDetector(), ModelChangeOutsidePipelineDetector()
    found = []
    for d in range(2):
        rid = f"r{d}"
        orch.process(audit(d * DAY, "svc-airflow", "pipeline.run", "pipeline:p", run_id=rid),
                     Source("ml.audit", 0, 2 * d))
        found += work.process(audit(d * DAY + 1800, "svc-trainer", "model.update",
                                    "model:fraud:3", run_id=rid),
                              Source("ml.audit", 1, 2 * d + 1)) or []
        found += work.process(audit(d * DAY + 3 * HOUR, "svc-trainer", "dataset.read",
                                    "dataset:x"), Source("ml.audit", 1, 100 + d)) or []
    assert [f.evidence["rule"] for f in found] == ["unknown_run", "unknown_run"]


def test_forged_run_id_is_reported_after_the_hold() -> None:
    p = TwoPartitions()
    scheduled_days(p, 2)
    t = 2 * DAY + 3 * HOUR
    assert p.update(t, "fraud-9-9", who="mallory") == []  # held: the run may still come
    held_at = p.offset
    found = p.tick(t + 901)  # this partition's event time passes the hold
    assert [(f.entity.id, f.evidence["rule"]) for f in found] == [("mallory", "unknown_run")]
    assert (found[0].sources[0].partition, found[0].sources[0].offset) == (1, held_at)


def test_run_started_by_an_unknown_principal_is_reported() -> None:
    p = TwoPartitions()
    scheduled_days(p, 2)  # watch starts; svc-airflow is established
    t = 2 * DAY + 5 * HOUR
    p.run(t, "mine-1", orchestrator="mallory")  # a first-ever run, after the warm-up
    found = p.update(t + 600, "mine-1", who="mallory-bot")
    assert [(f.entity.id, f.evidence["rule"]) for f in found] == [
        ("mallory-bot", "unknown_orchestrator")]
    assert found[0].evidence["run_orchestrator"] == "mallory"


def test_orchestrator_with_a_run_history_after_the_warm_up_is_trusted() -> None:
    p = TwoPartitions(min_orchestrator_runs=2)
    scheduled_days(p, 2)
    t = 2 * DAY + 5 * HOUR
    for k in range(2):  # a new pipeline's first runs fire, then it is established
        p.run(t + k * HOUR, f"new-{k}", orchestrator="dagster-prod")
        p.end(t + k * HOUR + 60, f"new-{k}", orchestrator="dagster-prod")
    p.run(t + 3 * HOUR, "new-2", orchestrator="dagster-prod")
    assert p.update(t + 3 * HOUR + 600, "new-2") == []


def test_update_outside_the_run_window_is_reported() -> None:
    p = TwoPartitions()
    scheduled_days(p, 2)
    # The run fraud-1-0 ended at DAY + 1900; reusing its id hours later is not inside it.
    found = p.update(DAY + 5 * HOUR, "fraud-1-0")
    assert [f.evidence["rule"] for f in found] == ["outside_run"]


def test_update_before_the_orchestrators_record_arrives_is_held_not_reported() -> None:
    # The ordering race: the trainer's replica judges the update before the
    # orchestrator's replica has published the run.
    p = TwoPartitions()
    scheduled_days(p, 2)
    t = 2 * DAY + HOUR
    assert p.update(t + 1800, "late-1") == []  # not yet known: held
    assert len(p.work.held) == 1
    p.run(t, "late-1")  # the record arrives (event time earlier than the update)
    assert p.tick(t + 1800 + 2000) == []
    assert p.work.held == []


def test_person_overwriting_the_model_without_a_run_is_still_tampering() -> None:
    p = TwoPartitions()
    scheduled_days(p, 2)
    found = p.update(2 * DAY + 13 * HOUR, None, who="dana")
    assert [(f.severity, f.evidence["rule"]) for f in found] == [("critical", "no_run")]


def test_held_changes_survive_snapshot_and_restore_and_the_bound_table_is_not_saved() -> None:
    p = TwoPartitions()
    scheduled_days(p, 1)
    p.update(DAY + HOUR, "ghost", who="mallory")
    state = p.work.snapshot()
    fresh = ModelChangeOutsidePipelineDetector()
    fresh.bind_context(p.table)
    fresh.restore(state)
    assert len(fresh.held) == 1 and fresh._context is p.table
    out = fresh.process(audit(DAY + 3 * HOUR, "svc-trainer", "dataset.read", "dataset:x"),
                        Source("ml.audit", 1, 999))
    assert out is not None and out[0].evidence["rule"] == "unknown_run"


def test_pipeline_shares_one_context_table_across_partitions() -> None:
    pipe = Pipeline([DetectorSpec("access.model_change")])
    found = pipe.process(audit(0.0, "svc-airflow", "pipeline.run", "pipeline:p", run_id="r1"),
                         Source("ml.audit", 0, 0))
    found += pipe.process(audit(1800.0, "svc-trainer", "model.update", "model:m:1",
                                run_id="r1"), Source("ml.audit", 1, 0))
    found += pipe.process(audit(9000.0, "svc-trainer", "dataset.read", "dataset:x"),
                          Source("ml.audit", 1, 1))
    assert found == []
    assert pipe.context.get_run("r1") is not None


def test_training_write_new_worker_inside_an_established_run_is_not_a_new_writer() -> None:
    table = InMemoryContextTable()
    orch = ModelChangeOutsidePipelineDetector()
    writes = TrainingDataWriteDetector(warmup_seconds=DAY, warmup_windows=3)
    orch.bind_context(table)
    writes.bind_context(table)
    n = 0

    def write(t: float, who: str, **attrs: Any) -> list[Finding]:
        nonlocal n
        n += 1
        ev = AuditEvent(ts=t, actor=who, action="dataset.write", resource="dataset:train",
                        outcome="success", bytes=4_000_000, records=10_000,
                        attributes=attrs or None)
        return writes.process(ev, Source("ml.audit", 1, n)) or []

    for d in range(3):
        rid = f"r{d}"
        orch.process(audit(d * DAY, "svc-airflow", "pipeline.run", "pipeline:p", run_id=rid),
                     Source("ml.audit", 0, d))
        for k in range(3):
            assert write(d * DAY + 60 + k, "svc-etl", run_id=rid) == []
    orch.process(audit(3 * DAY, "svc-airflow", "pipeline.run", "pipeline:p", run_id="r3"),
                 Source("ml.audit", 0, 3))
    # the pipeline's ETL account was rotated: its first write is inside run r3
    assert write(3 * DAY + 120, "svc-etl-v2", run_id="r3") == []
    # a newcomer without a run, or with a forged one, is still a new writer
    assert [f.evidence["rule"] for f in write(3 * DAY + 200, "intern")] == ["new_writer"]
    assert [f.evidence["rule"] for f in write(3 * DAY + 300, "eve", run_id="nope")] == [
        "new_writer"]
