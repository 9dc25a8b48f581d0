"""volume.peer_rate: a principal's own bursts (at this hour of day, or earlier ones on
its first day) excuse it against its peers; a flood unlike its own history does not."""

from __future__ import annotations

import numpy as np

from detectors.abuse.volume import PeerRateDetector
from detectors.events import InferenceEvent
from detectors.findings import Finding, Source

DAY = 86_400.0


def _traffic(days: int, seed: int = 0, batch_hours: tuple[float, ...] = (21.0,),
             flood_at: float | None = None) -> list[tuple[float, str]]:
    """30 daytime callers (~1 request a minute each, 08-20h), a batch scorer that
    sends 1,500 requests in 75 s at each of ``batch_hours`` every day, and
    optionally a daytime caller flooding 2,000 requests in 3 minutes at ``flood_at``."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, str]] = []
    for day in range(days):
        base = day * DAY
        for c in range(30):
            n = int(rng.poisson(720))
            for t in rng.uniform(8 * 3600, 20 * 3600, n):
                out.append((base + float(t), f"app-{c}"))
        for hour in batch_hours:
            start = base + hour * 3600 + float(rng.uniform(0, 900))
            for t in start + np.sort(rng.uniform(0, 75, 1500)):
                out.append((float(t), "batch-scorer"))
    if flood_at is not None:
        for i in range(2000):
            out.append((flood_at + i * 0.09, "app-3"))
    out.sort()
    return out


def _run(det: PeerRateDetector, traffic: list[tuple[float, str]]) -> list[Finding]:
    """Findings, each with ``evidence["t"]``: the traffic time (s) of its trigger."""
    found: list[Finding] = []
    for i, (t, who) in enumerate(traffic):
        ev = InferenceEvent(ts=1.7e9 + t, model_id="m", request_id=str(i), principal=who,
                            features=[0.0], prediction=0)
        for f in det.process(ev, Source("ml.inference", 0, i)) or []:
            f.evidence["t"] = t
            found.append(f)
    return found


def _days_reported(found: list[Finding], who: str) -> list[int]:
    return sorted({int(f.evidence["t"] // DAY) for f in found if f.entity.id == who})


def test_nightly_batch_is_reported_on_its_first_night_only() -> None:
    found = _run(PeerRateDetector(), _traffic(days=4))
    # Day one: its first burst is judged against the daytime peers (a fresh key
    # flooding looks the same); from the second night on, its own bursts at
    # this hour excuse it.
    assert _days_reported(found, "batch-scorer") == [0]
    first = next(f for f in found if f.entity.id == "batch-scorer")
    assert first.evidence["own_reference_rule"] == "none"


def test_without_own_bursts_the_batch_is_reported_every_night() -> None:
    # The mechanism off (self_ratio 0): the old behaviour, one finding a night.
    found = _run(PeerRateDetector(self_ratio=0.0), _traffic(days=4))
    assert _days_reported(found, "batch-scorer") == [0, 1, 2, 3]


def test_cold_start_an_earlier_burst_on_the_first_day_excuses_the_next() -> None:
    # Batches every 90 minutes from 18:00: on day one the later batches are in
    # line with the first (earlier bursts count while own history < 1 day).
    hours = (18.0, 19.5, 21.0, 22.5)
    found = _run(PeerRateDetector(), _traffic(days=1, batch_hours=hours))
    times = [f.evidence["t"] for f in found if f.entity.id == "batch-scorer"]
    assert len(times) == 1 and times[0] < 19 * 3600
    assert len(_run(PeerRateDetector(burst_gap_seconds=1e9),
                    _traffic(days=1, batch_hours=hours))) == 4


def test_a_burst_at_a_new_hour_after_day_one_is_judged_against_peers_again() -> None:
    # Two nights at 21:00, then on day three it bursts at 15:00 as well: the
    # hour-of-day reference does not cover it.
    traffic = _traffic(days=3)
    rng = np.random.default_rng(9)
    start = 2 * DAY + 15 * 3600
    traffic += [(float(t), "batch-scorer") for t in start + np.sort(rng.uniform(0, 75, 1500))]
    traffic.sort()
    found = _run(PeerRateDetector(), traffic)
    late = [f for f in found if f.entity.id == "batch-scorer" and f.evidence["t"] > DAY]
    assert len(late) == 1 and late[0].evidence["own_reference_rule"] == "none"


def test_flood_by_a_daytime_caller_is_still_reported_after_days_of_history() -> None:
    found = _run(PeerRateDetector(), _traffic(days=3, flood_at=2 * DAY + 11 * 3600))
    flood = [f for f in found if f.entity.id == "app-3"]
    assert len(flood) == 1 and flood[0].evidence["observed_count"] <= 200
    assert _days_reported(found, "batch-scorer") == [0]


def test_a_continuing_flood_never_excuses_itself() -> None:
    # A fresh key flooding for 30 minutes: its own earlier minutes are no reference.
    traffic = _traffic(days=1, batch_hours=())
    traffic += [(12 * 3600 + i * 0.1, "fresh-key") for i in range(18_000)]
    traffic.sort()
    det = PeerRateDetector(cooldown_seconds=60.0)
    found = [f for f in _run(det, traffic) if f.entity.id == "fresh-key"]
    assert len(found) >= 25  # one per minute of the flood, none excused


def test_own_bursts_survive_snapshot_and_restore() -> None:
    traffic = _traffic(days=3)
    cut = next(i for i, (t, _) in enumerate(traffic) if t > 1.5 * DAY)
    det = PeerRateDetector()
    _run(det, traffic[:cut])
    fresh = PeerRateDetector()
    fresh.restore(det.snapshot())
    found = _run(fresh, traffic[cut:])
    assert _days_reported(found, "batch-scorer") == []
    stats = fresh.stats()
    assert stats["calibration_peer_windows"] > 100
    assert stats["calibration_principals_with_bursts"] >= 1


def _batch(traffic: list[tuple[float, str]], who: str, start: float, n: int,
           seconds: float, seed: int) -> list[tuple[float, str]]:
    rng = np.random.default_rng(seed)
    out = traffic + [(float(t), who) for t in start + np.sort(rng.uniform(0, seconds, n))]
    out.sort()
    return out


def test_a_new_batch_scorer_in_line_with_the_models_other_batches_is_not_reported() -> None:
    # Cold start (issue #14): a second scheduled scorer, first seen at its first
    # nightly job, 40 minutes after the first scorer's job. Its burst is the size
    # the model already takes from the other: not reported. The first scorer
    # has no such reference and is.
    traffic = _batch(_traffic(days=1), "second-scorer", 21.9 * 3600, 1800, 90, 3)
    found = _run(PeerRateDetector(), traffic)
    assert {f.entity.id for f in found} == {"batch-scorer"}
    assert "other_callers_burst_count" not in found[0].evidence
    off = _run(PeerRateDetector(new_seconds=0), traffic)
    assert {f.entity.id for f in off} == {"batch-scorer", "second-scorer"}


def test_a_fresh_key_far_beyond_the_models_bursts_is_still_reported() -> None:
    # 6,000 requests a minute: three times anything the batch scorer sent.
    traffic = _batch(_traffic(days=1), "fresh-key", 22.5 * 3600, 6000, 60, 4)
    found = [f for f in _run(PeerRateDetector(), traffic) if f.entity.id == "fresh-key"]
    assert len(found) == 1
    assert 0 < 2 * found[0].evidence["other_callers_burst_count"] \
        < found[0].evidence["observed_count"]


def test_an_established_caller_bursting_like_the_batches_is_still_reported() -> None:
    # The other callers' bursts excuse only new principals: a daytime caller
    # with hours of history sending a batch-sized burst is a flood.
    traffic = _batch(_traffic(days=1), "app-5", 21.9 * 3600, 1500, 75, 5)
    found = _run(PeerRateDetector(), traffic)
    assert "app-5" in {f.entity.id for f in found}


def test_the_models_bursts_survive_snapshot_and_restore() -> None:
    traffic = _batch(_traffic(days=1), "second-scorer", 21.9 * 3600, 1800, 90, 3)
    cut = next(i for i, (t, _) in enumerate(traffic) if t > 21.6 * 3600)
    det = PeerRateDetector()
    _run(det, traffic[:cut])
    fresh = PeerRateDetector()
    fresh.restore(det.snapshot())
    assert fresh.stats()["calibration_bursting_callers"] == 1
    assert "second-scorer" not in {f.entity.id for f in _run(fresh, traffic[cut:])}
