"""Every format fixture file, message by message, gives exactly the expected events.

One test per fixture file (its messages depend on each other: a request waits
for its response); a failure names the message and the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.formats import FORMATS, make_format

from .fixture_io import ROOT, fixture_files, mismatches, read_fixture


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_fixture_decodes_to_the_expected_events(path: Path) -> None:
    options, messages = read_fixture(path)
    fmt = make_format(path.parent.name, options)
    assert messages, "a fixture file holds at least one message"
    problems = []
    for message in messages:
        results = fmt.decode(message.value, message.headers, message.timestamp_ms)
        problems += [f"{message.name}: {p}" for p in mismatches(results, message.expect)]
    assert not problems, "\n".join(problems)


def test_every_format_has_fixtures() -> None:
    assert {p.name for p in ROOT.iterdir() if any(p.glob("*.jsonl"))} == set(FORMATS)
