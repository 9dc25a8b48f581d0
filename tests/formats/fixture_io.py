"""Reading the format fixtures (tests/fixtures/formats/<format>/*.jsonl).

Each file is a sequence of Kafka messages fed, in order, to one instance of
the format named by its folder. An optional first line ``{"options": {...}}``
holds the format's options. Every other line is one message::

    {"name": "...", "headers": [[key, text]], "timestamp_ms": 1767225600000,
     "value": {...JSON...} | "value_text": "raw text",
     "expect": {"events": [{field: value, "attributes.k": v, "item": i}],
                "dead_letters": [{"reason": r, "item": i}]}}

Expected events list only the fields a test cares about; every expected event
and dead letter must appear, in order, and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from daemon.formats import DeadLetter, Decoded, Result
from detectors.events import event_type_of

ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "formats"


@dataclass
class Message:
    name: str
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None
    expect: dict[str, Any]


def fixture_files() -> list[Path]:
    return sorted(ROOT.glob("*/*.jsonl"))


def read_fixture(path: Path) -> tuple[dict[str, Any], list[Message]]:
    options: dict[str, Any] = {}
    messages = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "options" in row and "name" not in row:
            options = row["options"]
            continue
        value = (row["value_text"].encode() if "value_text" in row
                 else json.dumps(row["value"]).encode())
        messages.append(Message(
            name=f"{path.name}:{number} {row['name']}",
            value=value,
            headers=[(k, v.encode()) for k, v in row.get("headers", [])],
            timestamp_ms=row.get("timestamp_ms"),
            expect=row["expect"],
        ))
    return options, messages


def flat(result: Decoded) -> dict[str, Any]:
    """An event as a flat dict: its fields, ``attributes.<k>``, ``event_type``, ``item``."""
    data = msgspec.to_builtins(result.event)
    data["event_type"] = event_type_of(result.event)
    for key, value in (data.pop("attributes", None) or {}).items():
        data[f"attributes.{key}"] = value
    data["item"] = result.item
    return data


def mismatches(results: list[Result], expect: dict[str, Any]) -> Iterator[str]:
    events = [r for r in results if isinstance(r, Decoded)]
    dead = [r for r in results if isinstance(r, DeadLetter)]
    want_events = expect.get("events", [])
    want_dead = expect.get("dead_letters", [])
    if len(events) != len(want_events):
        yield f"{len(events)} events, expected {len(want_events)}: {[flat(e) for e in events]}"
    if len(dead) != len(want_dead):
        yield f"{len(dead)} dead letters, expected {len(want_dead)}: {dead}"
    for got, want in zip(events, want_events, strict=False):
        have = flat(got)
        for key, value in want.items():
            if not _same(have.get(key, "<absent>"), value):
                yield f"{key}: got {have.get(key, '<absent>')!r}, expected {value!r}"
    for got_dl, want_dl in zip(dead, want_dead, strict=False):
        for key, value in want_dl.items():
            if getattr(got_dl, key) != value:
                yield f"dead letter {key}: got {getattr(got_dl, key)!r}, expected {value!r}"


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, int | float):
        return abs(got - want) <= 1e-6 * max(1.0, abs(want))
    if isinstance(want, list) and isinstance(got, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want, strict=True))
    return bool(got == want)
