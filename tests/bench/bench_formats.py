"""Decoding cost of each input format: microseconds per message and per event.

Run: ``python tests/bench/bench_formats.py [--messages N] [--repeat R]``. Feeds
each format the messages of its fixtures (tests/fixtures/formats/<format>/),
repeated to about N messages, with request/response ids made unique per
repetition so the kserve and oip joins pair them as in production. Prints CPU
time (``time.process_time``, best of R runs) per message and per decoded event,
and the share of messages that were dead letters (the fixtures hold a few on
purpose).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from daemon.formats import FORMATS, Decoded, make_format
from tests.formats.fixture_io import fixture_files, read_fixture

_ID_HEADERS = ("ce_id", "ce-id", "x-request-id")
Message = tuple[bytes, list[tuple[str, bytes]], int | None]


def stream(name: str, messages: int) -> tuple[dict[str, object], list[Message]]:
    options: dict[str, object] = {}
    seeds = []
    for path in fixture_files():
        if path.parent.name == name:
            opts, msgs = read_fixture(path)
            options.update(opts)
            seeds += [(m.value, m.headers, m.timestamp_ms) for m in msgs]
    ids = sorted({v for _, h, _ in seeds for k, v in h if k.lower() in _ID_HEADERS}, key=len,
                 reverse=True)
    out = []
    k = 0
    while len(out) < messages:
        for value, headers, ts in seeds:
            suffix = f"-{k}".encode()
            for i in ids:
                value = value.replace(i, i + suffix)
            headers = [(h, v + suffix if v in ids else v) for h, v in headers]
            out.append((value, headers, ts))
        k += 1
    return options, out[:messages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'format':11} {'messages':>8} {'events':>7} {'dead':>5} {'us/msg':>8} {'us/event':>9}")
    for name in sorted(FORMATS):
        options, messages = stream(name, args.messages)
        best = float("inf")
        events = dead = 0
        for _ in range(args.repeat):
            fmt = make_format(name, options)
            decode = fmt.decode
            start = time.process_time()
            results = [decode(v, h, t) for v, h, t in messages]
            best = min(best, time.process_time() - start)
            events = sum(isinstance(r, Decoded) for rs in results for r in rs)
            dead = sum(not isinstance(r, Decoded) for rs in results for r in rs)
        print(f"{name:11} {len(messages):8d} {events:7d} {dead:5d} "
              f"{best / len(messages) * 1e6:8.1f} {best / max(events, 1) * 1e6:9.1f}")


if __name__ == "__main__":
    main()
