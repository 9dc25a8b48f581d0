"""``mlwatchd bench --formats``: a decode-cost line per format (small run; the real one is long)."""

from __future__ import annotations

import pytest

from daemon.cli import main
from daemon.formats import FORMATS
from daemon.lab.bench_formats import format_costs


@pytest.mark.parametrize("name", ["kserve", "oip"])
def test_four_repetitions_of_the_fixtures_decode_four_times_their_events(name: str) -> None:
    once = len(_seeds(name))
    [one] = format_costs(messages=once, repeat=1, names=[name])
    [four] = format_costs(messages=4 * once, repeat=1, names=[name])
    assert one.events > 0 and four.events == 4 * one.events and four.dead == 4 * one.dead


def _seeds(name: str) -> list[object]:
    from daemon.lab.bench_formats import FIXTURES, _read

    return [m for p in sorted((FIXTURES / name).glob("*.jsonl")) for m in _read(p)[1]]


def test_bench_formats_prints_us_per_event_for_every_format(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--formats", "--events", "120", "--runs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert sorted(rows) == sorted(FORMATS)
    for name, row in rows.items():
        messages, events, _dead, per_msg, per_event = row[1:]
        assert int(messages) == 120 and int(events) > 0, name
        assert 0 < float(per_msg) < 1e5 and 0 < float(per_event) < 1e5, name
