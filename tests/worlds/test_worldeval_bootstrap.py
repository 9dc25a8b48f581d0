"""eval --worlds --bootstrap-days: the first days of each world are learn-only, as
``replay --learn-until``: the detectors learn them, their findings are suppressed
(counted), never scored, and their events are in no judged total."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from daemon.cli import main
from daemon.lab.scenarios import DAY, T0
from daemon.lab.worldeval import run_world
from daemon.lab.worlds import draw, world_events
from daemon.replay import replay
from daemon.settings import load
from detectors.findings import Entity, Finding
from detectors.pipeline import DetectorSpec, Pipeline


class _EveryRun:
    """A pipeline that learns every event and reports one benign finding per run."""

    def __init__(self) -> None:
        self.seen: list[float] = []
        self.runs: list[tuple[float, float]] = []  # first and last event time of each run

    def process_many(self, kind: str, partition: int, items: object,
                     admit: bool = True) -> list[Finding]:
        run = list(items)  # type: ignore[call-overload]
        times = [float(e.ts) for e, _ in run]
        self.seen += times
        self.runs.append((min(times), max(times)))
        return [Finding.build(detector="fake.every_run", kind="drift", severity="low",
                              entity=Entity("principal", "nobody-attacks-this"), model_id=None,
                              summary="s", evidence={}, atlas=[], event_ts=times[-1],
                              sources=[s for _, s in run[-1:]])]


def test_learn_only_days_are_fed_but_neither_scored_nor_counted() -> None:
    world = world_events(draw(5, days=2, scale=0.05))
    boundary = T0 + DAY
    cold_pipe, boot_pipe = _EveryRun(), _EveryRun()
    cold, _ = run_world(5, cold_pipe, days=2, scale=0.05)
    boot, card = run_world(5, boot_pipe, days=2, scale=0.05, bootstrap_days=1)
    # Every event still reaches the detectors (they learn the history) ...
    assert len(boot_pipe.seen) == len(world.events) == cold.events
    # ... in runs that are all history or all judged,
    assert all(hi < boundary or lo >= boundary for lo, hi in boot_pipe.runs)
    history = sum(1 for e in world.events if e.ts < boundary)
    history_runs = sum(1 for _, hi in boot_pipe.runs if hi < boundary)
    assert 0 < history < len(world.events) and history_runs > 0
    # ... but only the judged day is scored: its events, its findings.
    assert boot.learnt_events == history and boot.events == len(world.events) - history
    assert boot.benign_events == boot.events - card.attack_events
    assert boot.suppressed == {"fake.every_run": history_runs}
    assert boot.false_findings == len(boot_pipe.runs) - history_runs
    assert cold.false_findings == len(cold_pipe.runs) > boot.false_findings
    assert boot.attacks == cold.attacks  # the attack day is judged whole
    assert cold.learnt_events == 0 and cold.suppressed == {}


def test_real_detectors_learn_on_the_bootstrap_day() -> None:
    pipeline = Pipeline(load(None).detector_specs())
    row, _ = run_world(3, pipeline, days=2, scale=0.05, bootstrap_days=1)
    assert row.learnt_events > 0 and row.bootstrap_days == 1
    # The calibration the judged day rests on includes what was learnt.
    drift = row.calibration["drift.features"]
    assert drift["reference_events"] > 0


def test_attack_day_cannot_be_learn_only() -> None:
    with pytest.raises(ValueError, match="bootstrap-days"):
        run_world(3, _EveryRun(), days=2, scale=0.05, bootstrap_days=2)


def test_cli_prints_what_was_learn_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--worlds", "1", "--days", "2", "--bootstrap-days", "1",
                 "--scale", "0.05"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("worlds 1 (0 held out), 2 days each: day 1 learn-only")
    assert "judged: day 2" in text
    assert "learn-only days (not scored, not in the totals above):" in text
    assert " 1+1 " in text  # the days column: learn-only + judged
    assert main(["eval", "--worlds", "1", "--bootstrap-days", "1"]) == 2  # needs --days
    assert main(["eval", "--worlds", "1", "--days", "2", "--bootstrap-days", "2"]) == 2


def test_learn_only_findings_open_no_incident(tmp_path: Path) -> None:
    # Day one 23:30 (history) and day two 00:10 (live): mallory grants herself
    # admin twice. Had the dropped finding opened an incident, the live one would
    # be its repeat 40 minutes later: absorbed, never emitted.
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"".join(orjson.dumps(
        {"event_type": "audit", "ts": t, "actor": "mallory", "action": "role.assign",
         "resource": "role:admin:mallory", "outcome": "success", "resource_type": "role"})
        + b"\n" for t in (T0 + 23.5 * 3600, T0 + DAY + 600)))

    def run(**learn: float) -> list[Finding]:
        pipeline = Pipeline([DetectorSpec("access.privilege_grant", {})])
        return replay(pipeline, [path], io.BytesIO(), **learn)[0]

    assert len(run()) == 1  # without learn-only: the repeat is absorbed
    live = run(learn_until=T0 + DAY)
    assert len(live) == 1 and not live[0].is_update
    assert live[0].ts.startswith("2026-11-03T00:10")
