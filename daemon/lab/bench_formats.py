"""``mlwatchd bench --formats``: decoding cost of each input format, per message and per event.

Feeds each format the messages of its fixtures (``tests/fixtures/formats/<format>/``
of a source checkout: real-shaped messages written from each format's public
specification), repeated to about ``messages`` messages, with request/response
ids made unique per repetition so the kserve and oip joins pair them as in
production. Prints CPU time (``time.process_time``, best of ``repeat`` runs)
per message and per decoded event, and how many results were dead letters
(the fixtures hold a few on purpose). Decoding only: no broker, no detectors.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.formats import FORMATS, Decoded, make_format

__all__ = ["FIXTURES", "FormatCost", "format_costs", "run_format_bench", "stream"]

#: The fixtures of a source checkout (the lab runs from one; they are not installed).
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "formats"
#: Headers whose value is a request id shared by a request and its response.
_ID_HEADERS = ("ce_id", "ce-id", "x-request-id")

Message = tuple[bytes, list[tuple[str, bytes]], int | None]


@dataclass(frozen=True)
class FormatCost:
    name: str
    messages: int
    events: int
    dead: int
    seconds: float  # CPU seconds for all messages, best run

    @property
    def us_per_message(self) -> float:
        return self.seconds / max(self.messages, 1) * 1e6

    @property
    def us_per_event(self) -> float:
        return self.seconds / max(self.events, 1) * 1e6


def _read(path: Path) -> tuple[dict[str, Any], list[Message]]:
    """(options, messages) of one fixture file (format: tests/formats/fixture_io.py)."""
    options: dict[str, Any] = {}
    out: list[Message] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "options" in row and "name" not in row:
            options = row["options"]
            continue
        value = (row["value_text"].encode() if "value_text" in row
                 else json.dumps(row["value"]).encode())
        out.append((value, [(k, v.encode()) for k, v in row.get("headers", [])],
                    row.get("timestamp_ms")))
    return options, out


def stream(name: str, messages: int, root: Path = FIXTURES) -> tuple[dict[str, Any],
                                                                     list[Message]]:
    """The format's fixture messages repeated to ``messages``, request ids made unique."""
    options: dict[str, Any] = {}
    seeds: list[Message] = []
    for path in sorted((root / name).glob("*.jsonl")):
        opts, msgs = _read(path)
        options.update(opts)
        seeds += msgs
    if not seeds:
        raise FileNotFoundError(f"no fixtures for {name} under {root}")
    ids = sorted({v for _, h, _ in seeds for k, v in h if k.lower() in _ID_HEADERS}, key=len,
                 reverse=True)
    out: list[Message] = []
    k = 0
    while len(out) < messages:
        for value, headers, ts in seeds:
            suffix = f"-{k}".encode()
            for i in ids:
                value = value.replace(i, i + suffix)
            out.append((value, [(h, v + suffix if v in ids else v) for h, v in headers], ts))
        k += 1
    return options, out[:messages]


def format_costs(messages: int = 20_000, repeat: int = 3,
                 names: list[str] | None = None, root: Path = FIXTURES) -> list[FormatCost]:
    """Decode cost of each format (all registered ones unless ``names``)."""
    costs = []
    for name in names or sorted(FORMATS):
        options, stream_ = stream(name, messages, root)
        best = float("inf")
        events = dead = 0
        for _ in range(max(repeat, 1)):
            decode = make_format(name, options).decode  # a fresh join each run
            start = time.process_time()
            results = [decode(v, h, t) for v, h, t in stream_]
            best = min(best, time.process_time() - start)
            events = sum(isinstance(r, Decoded) for rs in results for r in rs)
            dead = sum(not isinstance(r, Decoded) for rs in results for r in rs)
        costs.append(FormatCost(name, len(stream_), events, dead, best))
    return costs


def run_format_bench(messages: int = 20_000, repeat: int = 3) -> int:
    """Print the table; 2 when the fixtures are missing (not a source checkout)."""
    if not FIXTURES.is_dir():
        print(f"mlwatchd bench --formats: the format fixtures are not at {FIXTURES}; "
              "run it from a source checkout", file=sys.stderr)
        return 2
    print(f"mlwatchd bench --formats: {messages:,} messages per format from "
          f"{FIXTURES}, CPU time, best of {repeat}")
    print(f"{'format':11} {'messages':>8} {'events':>7} {'dead':>5} {'us/msg':>8} "
          f"{'us/event':>9}")
    for c in format_costs(messages, repeat):
        print(f"{c.name:11} {c.messages:8d} {c.events:7d} {c.dead:5d} "
              f"{c.us_per_message:8.1f} {c.us_per_event:9.1f}")
    return 0
