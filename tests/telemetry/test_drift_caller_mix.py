"""drift.features: a daily cycle of the caller mix (callers with their own segments,
active at different hours) is not drift; a change of every caller's inputs is."""

from __future__ import annotations

import numpy as np

from detectors.events import InferenceEvent
from detectors.findings import Finding
from detectors.telemetry.feature_drift import FeatureDriftDetector
from detectors.testing import feed

DAY = 86_400.0
STEP = 8.0  # seconds between requests: 10,800 a day


def _share_of_b(t: float) -> float:
    """Caller B (another time zone) ramps up from 06:00 to 0.8 at 18:00, then back."""
    h = (t % DAY) / 3600
    return max(0.0, 0.8 * (1 - abs(h - 18) / 12)) if h >= 6 else 0.0


def _events(days: int, seed: int = 0, drift_at: float | None = None) -> list[InferenceEvent]:
    rng = np.random.default_rng(seed)
    out = []
    for i, t in enumerate(np.arange(0, days * DAY, STEP)):
        who = "caller-b" if rng.random() < _share_of_b(t) else "caller-a"
        x = rng.normal(size=5)
        if who == "caller-b":
            x[0] += 1.0  # its own segment: not the model's first hours
        if drift_at is not None and t >= drift_at:
            x[2] += 0.8  # upstream change: every caller's inputs
        out.append(InferenceEvent(ts=1.7e9 + float(t), model_id="m", request_id=f"r{i}",
                                  principal=who, features=x.tolist(), prediction=0))
    return out


def _t(finding: Finding) -> float:
    return float(finding.evidence["events_seen"]) * STEP


def test_daily_caller_mix_cycle_is_not_drift() -> None:
    assert feed(FeatureDriftDetector(), _events(days=2)) == []


def test_without_caller_references_the_mix_cycle_is_reported() -> None:
    assert feed(FeatureDriftDetector(caller_reference=0), _events(days=2))


def test_upstream_change_of_every_caller_is_found_within_1000_events() -> None:
    drift_at = DAY + 14 * 3600  # both callers active
    found = feed(FeatureDriftDetector(), _events(days=2, drift_at=drift_at))
    assert len(found) == 1
    assert 0 <= _t(found[0]) - drift_at <= 1000 * STEP
    mix = found[0].evidence["caller_mix"]
    assert mix["score"] >= 1 and mix["callers_with_own_reference"] == 2
    # Against the model's first hours f0 moved too (caller B's segment); against
    # the callers' own references only f2 did.
    assert mix["top_features"][0] == "f2"


def test_caller_references_survive_snapshot_and_restore() -> None:
    events = _events(days=2)
    det = FeatureDriftDetector()
    assert feed(det, events[:12_000]) == []
    fresh = FeatureDriftDetector()
    fresh.restore(det.snapshot())
    assert feed(fresh, events[12_000:]) == []
    assert fresh.stats()["calibration_callers_with_own_reference"] == 2
