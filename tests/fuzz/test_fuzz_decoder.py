"""The decoder fuzzer, seeded and bounded: 20,000 inputs, none escapes, none slow.

The long run is on demand: ``make fuzz`` (1,000,000 inputs).
"""

from __future__ import annotations

from tests.fuzz.fuzz_decoder import run


def test_20000_seeded_fuzz_inputs_raise_only_bad_event_and_none_takes_50_ms() -> None:
    report = run(20_000, seed=12)
    assert report.inputs == 20_000
    assert report.uncaught == [], "\n".join(report.lines())
    assert report.slowest_ms < 50.0, "\n".join(report.lines())
    # the mix reaches the hostile cases, not only JSON syntax errors
    for outcome in ("ok", "bad:too_deep", "bad:ts_out_of_range", "bad:invalid_value",
                    "bad:not_json", "bad:wrong_type"):
        assert report.outcomes[outcome] > 0, outcome
