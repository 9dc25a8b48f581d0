"""``mlwatchd replay``: the detector pipeline over files, no Kafka.

The same :class:`~detectors.pipeline.Pipeline` as ``run``; only the I/O
differs. Each line of a file is one message of the chosen input format
(``--format``; default ``contract``: one event with ``event_type`` set), read
by that format exactly as ``run`` reads a Kafka message's value. With
``--kcat`` each line is a message as ``kcat -C -J`` prints it (``payload``,
``headers`` as a flat ``[name, value, ...]`` list, ``ts`` in ms), so formats
that read headers (KServe's CloudEvents) can be replayed from a topic dump.
Files ending in ``.gz`` are read decompressed (CloudTrail delivers its log
files so). One format instance reads all the files in order, so a KServe
request and its response join across lines as across messages.

An event's source is ``(file path, 0, line number, item)``, ``item`` being
its index inside the line when a line holds several (a CloudTrail file's
records); finding ids are stable across replays.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from daemon.formats import DeadLetter, Format, make_format
from detectors.events import Event, event_type_of
from detectors.findings import Finding, Source, encode_finding
from detectors.pipeline import Pipeline

__all__ = ["LearnOnly", "ReplayStats", "read_events", "replay"]

log = structlog.get_logger("mlwatchd.replay")


class ReplayStats:
    def __init__(self) -> None:
        self.events = 0
        self.bad_lines = 0
        self.findings = 0
        #: Events replayed learn-only, and the findings dropped for them.
        self.learnt = 0
        self.suppressed = 0


class LearnOnly:
    """Which events are learn-only, and feeding them so (``replay --learn-until`` /
    ``--bootstrap-s``, ``eval --worlds --bootstrap-days``).

    Events before ``learn_until`` (event time), or within ``bootstrap_s`` of
    the first event asked about, are history: :meth:`learn` feeds them to the
    pipeline (the detectors learn), drops their findings and counts both in
    ``stats`` (the daemon's bootstrap on a first start).

    >>> gate = LearnOnly(bootstrap_s=60.0)
    >>> [gate.learning(t) for t in (100.0, 159.0, 160.0)]
    [True, True, False]
    """

    def __init__(self, learn_until: float | None = None,
                 bootstrap_s: float | None = None) -> None:
        self.until = learn_until
        self.bootstrap_s = bootstrap_s

    def learning(self, ts: float) -> bool:
        if self.bootstrap_s is not None and self.until is None:
            self.until = ts + self.bootstrap_s
        return self.until is not None and ts < self.until

    @staticmethod
    def learn(pipeline: Pipeline, kind: str, partition: int,
              run: Sequence[tuple[Event, Source]], stats: ReplayStats) -> list[Finding]:
        """Feed ``run`` learn-only; its findings are counted in ``stats`` and returned
        for a tally, never to be emitted. They open no incident (a later live
        finding about the entity is a new one)."""
        found = pipeline.process_many(kind, partition, run, admit=False)
        stats.learnt += len(run)
        stats.suppressed += len(found)
        return found


def _kcat_message(line: bytes) -> tuple[bytes, list[tuple[str, bytes]], int | None] | str:
    """(value, headers, timestamp ms) of one ``kcat -J`` line, or why it is not one."""
    try:
        row: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not a kcat -J line (not JSON)"
    if not isinstance(row, dict) or not isinstance(row.get("payload"), str | None):
        return "not a kcat -J line (no string payload)"
    flat = row.get("headers") or []
    if not isinstance(flat, list) or len(flat) % 2 or \
            not all(isinstance(x, str | None) for x in flat):
        return "not a kcat -J line (headers must be [name, value, ...])"
    headers = [(str(flat[i]), (flat[i + 1] or "").encode()) for i in range(0, len(flat), 2)]
    ts = row.get("ts")
    payload = row.get("payload")
    return (payload.encode() if payload is not None else b"", headers,
            ts if isinstance(ts, int) and not isinstance(ts, bool) else None)


def read_events(
    paths: Iterable[str | Path], stats: ReplayStats, max_bytes: int | None = None,
    fmt: Format | None = None, kcat: bool = False,
) -> Iterator[tuple[Event, Source]]:
    """Events of the files in order; bad lines are logged and counted, not fatal.

    Lines longer than ``max_bytes`` are bad lines (``too_large``), as in ``run``.
    Only the fixed bounds on ``ts`` apply, not the window around now: a
    backtest replays the past. A line of several events with one bad counts
    one bad line and keeps the good events.
    """
    if fmt is None:
        options = {"max_bytes": max_bytes} if max_bytes is not None else {}
        fmt = make_format("contract", options)
    for path in paths:
        name = str(path)
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rb") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                value: bytes = line
                headers: list[tuple[str, bytes]] = []
                timestamp_ms: int | None = None
                if kcat:
                    message = _kcat_message(line)
                    if isinstance(message, str):
                        stats.bad_lines += 1
                        log.warning("bad_line", file=name, line=lineno, reason="not_kcat",
                                    detail=message)
                        continue
                    value, headers, timestamp_ms = message
                bad = False
                for result in fmt.decode(value, headers, timestamp_ms):
                    if isinstance(result, DeadLetter):
                        bad = True
                        log.warning("bad_line", file=name, line=lineno, format=result.format,
                                    item=result.item, reason=result.reason,
                                    detail=result.detail[:200])
                        continue
                    stats.events += 1
                    yield result.event, Source(name, 0, lineno, result.item)
                stats.bad_lines += bad


def replay(
    pipeline: Pipeline, paths: Iterable[str | Path], out: IO[bytes] | None = None,
    max_bytes: int | None = None, fmt: Format | None = None, kcat: bool = False,
    learn_until: float | None = None, bootstrap_s: float | None = None,
) -> tuple[list[Finding], ReplayStats]:
    """Run ``pipeline`` over ``paths``; write each finding as a JSON line to ``out``.

    Events before ``learn_until`` (event time), or within ``bootstrap_s`` of
    the first event, are learn-only: the detectors learn them, their findings
    are dropped and counted (the daemon's bootstrap on a first start).
    """
    stats = ReplayStats()
    gate = LearnOnly(learn_until, bootstrap_s)
    findings: list[Finding] = []
    for event, source in read_events(paths, stats, max_bytes, fmt, kcat):
        if gate.learning(float(event.ts)):
            gate.learn(pipeline, event_type_of(event), 0, ((event, source),), stats)
            continue
        found = pipeline.process_many(event_type_of(event), 0, ((event, source),))
        for finding in found:
            if out is not None:
                out.write(encode_finding(finding) + b"\n")
            findings.append(finding)
    if out is not None:
        out.flush()
    stats.findings = len(findings)
    return findings, stats


def main_replay(
    pipeline: Pipeline, paths: list[str], max_bytes: int | None = None,
    fmt: Format | None = None, kcat: bool = False,
    learn_until: float | None = None, bootstrap_s: float | None = None,
) -> int:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        for p in missing:
            print(f"mlwatchd replay: no such file: {p}", file=sys.stderr)
        return 2
    _, stats = replay(pipeline, paths, sys.stdout.buffer, max_bytes, fmt, kcat,
                      learn_until, bootstrap_s)
    log.info("replay_done", events=stats.events, bad_lines=stats.bad_lines,
             findings=stats.findings, learnt=stats.learnt, suppressed=stats.suppressed)
    return 0
