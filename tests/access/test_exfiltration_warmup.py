"""Exfiltration during warm-up: peers judge, but a principal's own short history counts."""

from __future__ import annotations

from detectors.access.exfiltration import ExfiltrationDetector
from detectors.events import AuditEvent
from detectors.findings import Source

HOUR = 3600.0


def _read(det, t, actor, size, offset):
    ev = AuditEvent(ts=t, actor=actor, action="dataset.read", resource="dataset:train",
                    outcome="success", bytes=int(size), records=int(size // 400))
    return det.process(ev, Source("ml.audit", 0, offset))


def _crowd(det, days):
    """60 people reading ~10 MB an hour during the day: the peer population."""
    offset = 0
    for day in range(days):
        for person in range(60):
            for hour in (9, 11, 14, 16):
                t = day * 86400 + hour * HOUR + person
                assert _read(det, t, f"user-{person}", 1e7 * (1 + person % 5), offset) is None
                offset += 1
    return offset


def test_steady_heavy_service_account_is_quiet_while_warming_up():
    det = ExfiltrationDetector()
    offset = _crowd(det, days=2)
    found = []
    for day in range(2, 9):  # nightly read growing 10% a day: 100x any human, but steady
        for person in range(60):
            _read(det, day * 86400 + 9 * HOUR + person, f"user-{person}", 1e7, offset)
            offset += 1
        out = _read(det, day * 86400 + 2 * HOUR, "svc-train", 2e9 * 1.1 ** day, offset)
        offset += 1
        found.extend(out or ())
    # Its first nights are judged by peers alone (fewer than own_min_windows windows):
    # at most those may fire; once it has its own history, the steady read is quiet.
    assert all(f.evidence.get("baseline_windows", 0) < 3 for f in found), found


def test_newcomer_with_huge_read_is_still_caught_by_peers():
    det = ExfiltrationDetector()
    offset = _crowd(det, days=3)
    hits = [_read(det, 3 * 86400 + 3 * HOUR + i * 30, "contractor", 2e9, offset + i)
            for i in range(40)]
    first = next(i for i, f in enumerate(hits) if f)
    assert first <= 2, f"caught after {first + 1} reads of 2 GB"
