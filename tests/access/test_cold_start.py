"""Cold start: access detectors useful from the first day of a deployment.

Each test fails without its mechanism: the exfiltration detector's
population and breadth floors (no absolute 1 GB / 20 datasets / 8 models,
own short history judged from the first window), the training-write
detector's pipeline-fed datasets (established from their first run writes),
and replay's learn-only switch.
"""

from __future__ import annotations

import io
import random

import orjson

from daemon.replay import replay
from detectors.access.exfiltration import ExfiltrationDetector
from detectors.access.training_writes import TrainingDataWriteDetector
from detectors.events import AuditEvent
from detectors.findings import Source
from detectors.pipeline import DetectorSpec, Pipeline

HOUR = 3600.0
DAY = 86400.0
T0 = 1_790_000_000.0 - 1_790_000_000.0 % DAY  # a midnight UTC
_offsets = iter(range(10**9))


def _audit(t: float, actor: str, action: str, resource: str, **extra: object) -> AuditEvent:
    return AuditEvent(ts=t, actor=actor, action=action, resource=resource, outcome="success",
                      **extra)  # type: ignore[arg-type]


def _feed(det, event):
    return det.process(event, Source("ml.audit", 0, next(_offsets)))


def _office_day(det, day: int, people: int = 30, rng=None) -> list:
    """Each person reads 1-3 of its own datasets, 2-8 MB a read, a few hours of a day."""
    rng = rng or random.Random(day)
    found = []
    for p in range(people):
        for hour in (9, 11, 14):
            t = T0 + day * DAY + hour * HOUR + p * 7
            size = (2 + p % 7) * 1e6 * rng.uniform(0.8, 1.25)
            ev = _audit(t, f"user-{p}", "dataset.read", f"dataset:team-{p % 5}",
                        bytes=int(size), records=int(size // 350))
            found.extend(_feed(det, ev) or ())
    return found


def test_day_two_exfiltration_below_old_absolute_floors_is_found():
    det = ExfiltrationDetector()
    assert _office_day(det, 0) == []
    # Day two, 03:00: user-3 (usual ~5 MB an hour) reads 10 datasets it never
    # read, 60 MB each: 600 MB, far above its own first day and its peers, but
    # below the old floor of 1 GB and 20 datasets, and before any warm-up.
    hits = []
    for i in range(10):
        ev = _audit(T0 + DAY + 3 * HOUR + i * 40, "user-3", "dataset.read", f"dataset:crm-{i}",
                    bytes=60_000_000, records=170_000)
        hits.extend(_feed(det, ev) or ())
    assert len(hits) == 1
    f = hits[0]
    assert f.entity.id == "user-3" and f.kind == "exfiltration"
    assert f.evidence["baseline_windows"] == 3 and f.evidence["observed"] < 1e9
    # The rest of the office's second day stays quiet.
    assert _office_day(det, 1) == []


def test_population_floor_keeps_a_light_user_growing_tenfold_quiet():
    det = ExfiltrationDetector()
    _office_day(det, 0)
    # light-user read 100 kB an hour on day one; 15x that (1.5 MB) is far above
    # its own short history, but below what 1 in 100 peer windows reaches.
    for hour in (9, 11, 14):
        assert _feed(det, _audit(T0 + hour * HOUR + 500, "light", "dataset.read",
                                 "dataset:team-1", bytes=100_000, records=300)) is None
    out = _feed(det, _audit(T0 + DAY + 10 * HOUR, "light", "dataset.read", "dataset:team-1",
                            bytes=1_500_000, records=4_000))
    assert out is None
    assert det.peer_floor[0] > 1_500_000  # the population floor is what held it


def test_night_burst_of_model_downloads_by_an_analyst_who_rarely_downloads():
    det = ExfiltrationDetector()
    rng = random.Random(5)
    for day in range(8):
        _office_day(det, day, rng=rng)
        # The analyst reads daily and downloaded one model version once.
        for hour in (10, 15):
            _feed(det, _audit(T0 + day * DAY + hour * HOUR, "ana", "dataset.read",
                              "dataset:team-2", bytes=3_000_000, records=9_000))
        if day == 2:
            _feed(det, _audit(T0 + day * DAY + 16 * HOUR, "ana", "model.download",
                              "model:churn:3", bytes=80_000_000))
    hits = []
    for v in range(6):  # 02:00: six versions of two models within minutes
        ev = _audit(T0 + 8 * DAY + 2 * HOUR + v * 60, "ana", "model.download",
                    f"model:{('fraud', 'churn')[v % 2]}:{v}", bytes=80_000_000)
        hits.extend(_feed(det, ev) or ())
    assert len(hits) == 1
    assert hits[0].evidence["metric"] in ("models", "bytes")
    assert hits[0].evidence["totals"]["models"] <= 6


def _pipeline_run(det, t: float, run: str, rows: int = 8_000) -> list:
    ev = _audit(t, "svc-etl", "dataset.write", "dataset:train-fraud", bytes=rows * 400,
                records=rows, attributes={"run_id": run})
    return list(_feed(det, ev) or ())


def test_first_human_write_to_pipeline_fed_training_data_on_day_two():
    det = TrainingDataWriteDetector()
    assert _pipeline_run(det, T0 + 2 * HOUR, "r-0") == []
    # Day two: a person writes 5,000 records outside any pipeline run.
    ev = _audit(T0 + DAY + 11 * HOUR, "dana", "dataset.write", "dataset:train-fraud",
                bytes=2_000_000, records=5_000)
    found = _feed(det, ev)
    assert found is not None and len(found) == 1
    f = found[0]
    assert f.evidence["rule"] == "new_writer" and f.evidence["outside_pipeline_run"]
    assert f.entity.id == "dana" and f.severity == "medium"  # below the usual write size
    big = _feed(det, _audit(T0 + DAY + 12 * HOUR, "erin", "dataset.write",
                            "dataset:train-fraud", bytes=80_000_000, records=200_000))
    assert big is not None and big[0].severity == "high"


def test_new_pipeline_worker_and_unpiped_datasets_stay_quiet_on_day_one():
    det = TrainingDataWriteDetector()
    _pipeline_run(det, T0 + 2 * HOUR, "r-0")
    # A second worker identity writing inside a run is the pipeline, not a person.
    ev = _audit(T0 + 6 * HOUR, "svc-etl-2", "dataset.write", "dataset:train-fraud",
                bytes=3_000_000, records=8_000, attributes={"run_id": "r-1"})
    assert _feed(det, ev) is None
    # A dataset written by hand from the start is not pipeline-fed: no day-one rule.
    for i, who in enumerate(("bo", "cy", "di")):
        ev = _audit(T0 + (8 + i) * HOUR, who, "dataset.write", "dataset:scratch",
                    bytes=1000, records=10)
        assert _feed(det, ev) is None


def test_replay_bootstrap_learns_the_first_days_without_findings(tmp_path):
    path = tmp_path / "audit.jsonl"
    lines = []
    for day in range(3):
        for p in range(30):
            for hour in (9, 11, 14):
                lines.append({"event_type": "audit", "ts": T0 + day * DAY + hour * HOUR + p,
                              "actor": f"user-{p}", "action": "dataset.read",
                              "resource": "dataset:x", "outcome": "success",
                              "bytes": 5_000_000, "records": 14_000})
    # Day one, 20:00: bob exports 8 GB (history); day four: carol does (live).
    for who, t in (("bob", T0 + 20 * HOUR), ("carol", T0 + 3 * DAY + 10 * HOUR)):
        lines.append({"event_type": "audit", "ts": t, "actor": who,
                      "action": "dataset.export", "resource": f"dataset:{who}",
                      "outcome": "success", "bytes": 8_000_000_000, "records": 1})
    lines.sort(key=lambda e: e["ts"])
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in lines) + b"\n")

    def run(**learn: float) -> tuple[list, object]:
        pipeline = Pipeline([DetectorSpec("access.exfiltration", {})])
        found, stats = replay(pipeline, [path], io.BytesIO(), **learn)
        return [f.evidence["last_resource"] for f in found], stats

    plain, _ = run()
    assert plain == ["dataset:bob", "dataset:carol"]
    learnt, stats = run(bootstrap_s=2 * DAY)
    assert learnt == ["dataset:carol"]
    assert stats.learnt > 0 and stats.suppressed == 1
    until, _ = run(learn_until=T0 + 3 * DAY)
    assert until == ["dataset:carol"]


def test_low_and_slow_three_times_a_usual_day_over_never_read_datasets():
    det = ExfiltrationDetector()
    rng = random.Random(11)
    quiet = []
    for day in range(5):
        quiet += _office_day(det, day, rng=rng)
        for hour in (9, 13, 16):  # ~18 MB a day over its two datasets
            quiet += _feed(det, _audit(T0 + day * DAY + hour * HOUR + 30, "mia", "dataset.read",
                                       f"dataset:team-{hour % 2}", bytes=6_000_000,
                                       records=17_000)) or []
    assert quiet == []
    # Day six, working hours: 12 datasets it never read, 6 MB each, spread over
    # eight hours: ~9 MB an hour (no hour stands out), 72 MB in the day (4x).
    hits = []
    for i in range(12):
        t = T0 + 5 * DAY + 9 * HOUR + i * 40 * 60
        hits += _feed(det, _audit(t, "mia", "dataset.read", f"dataset:archive-{i}",
                                  bytes=6_000_000, records=17_000)) or []
    assert len(hits) == 1, hits
    ev = hits[0].evidence
    assert ev["rule"] == "low_and_slow" and ev["never_read_datasets"] >= 5
    assert ev["ratio_to_usual"] >= 3
    # The same day's volume over datasets it already reads is an ordinary busy day.
    det2 = ExfiltrationDetector()
    for day in range(5):
        _office_day(det2, day, rng=random.Random(day))
        for hour in (9, 13, 16):
            _feed(det2, _audit(T0 + day * DAY + hour * HOUR + 30, "mia", "dataset.read",
                               f"dataset:team-{hour % 2}", bytes=6_000_000, records=17_000))
    busy = [_feed(det2, _audit(T0 + 5 * DAY + 9 * HOUR + i * 40 * 60, "mia", "dataset.read",
                               f"dataset:team-{i % 2}", bytes=6_000_000, records=17_000))
            for i in range(12)]
    assert busy == [None] * 12


def test_replay_learn_until_accepts_epoch_and_iso_and_config_bounds_history():
    import argparse

    import pytest

    from daemon.cli import _timestamp
    from daemon.settings import Settings

    assert _timestamp("1767225600") == 1767225600.0
    assert _timestamp("2026-01-01T00:00:00Z") == 1767225600.0
    with pytest.raises(argparse.ArgumentTypeError):
        _timestamp("yesterday")
    assert Settings(bootstrap={"history_s": 604800}).bootstrap.history_s == 604800
    with pytest.raises(ValueError, match="history_s"):
        Settings(bootstrap={"history_s": -1})
