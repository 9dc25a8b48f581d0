"""A seeded, bounded run of the pipeline fuzzer (tests/fuzz/fuzz_pipeline.py).

Every default detector, mutated events, one event per call: no detector may
raise and no event may take more than 50 ms of CPU. The long run is
``python tests/fuzz/fuzz_pipeline.py --events 40000`` (or more).
"""

from __future__ import annotations

from tests.fuzz.fuzz_pipeline import events, run


def test_fuzzed_events_raise_nothing_and_none_takes_over_50_ms() -> None:
    report = run(n=6000, seed=12, limit_ms=50.0, max_principals=300)
    assert report.errors == []
    assert report.over_limit == []
    assert report.decoded > 5000 and report.rejected > 0  # it reached the detectors
    mutated = sum(v for k, v in report.mutations.items() if k not in ("benign", "flood"))
    assert mutated > 500


def test_fuzz_events_are_seeded() -> None:
    assert list(events(3, 300)) == list(events(3, 300))
    assert list(events(3, 300)) != list(events(4, 300))


def test_fuzzed_polls_raise_nothing() -> None:
    # Polled runs as the daemon feeds them: the vectorised judging of many
    # principals' batches at once sees the mutated events too.
    report = run(n=4000, seed=13, max_principals=300, batch=500)
    assert report.errors == []
    assert report.decoded > 3500
