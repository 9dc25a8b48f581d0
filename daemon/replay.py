"""``mlwatchd replay``: the detector pipeline over JSON Lines files, no Kafka.

The same :class:`~detectors.pipeline.Pipeline` as ``run``; only the I/O
differs. Each line is one event with ``event_type`` set; a line's source is
``(file path, 0, line number)``, so finding ids are stable across replays.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import structlog

from detectors.events import BadEvent, Event, decode_any, event_type_of
from detectors.findings import Finding, Source, encode_finding
from detectors.pipeline import Pipeline

__all__ = ["ReplayStats", "read_events", "replay"]

log = structlog.get_logger("mlwatchd.replay")


class ReplayStats:
    def __init__(self) -> None:
        self.events = 0
        self.bad_lines = 0
        self.findings = 0
        #: Events replayed learn-only, and the findings dropped for them.
        self.learnt = 0
        self.suppressed = 0


def read_events(
    paths: Iterable[str | Path], stats: ReplayStats, max_bytes: int | None = None
) -> Iterator[tuple[Event, Source]]:
    """Events of JSON Lines files in order; bad lines are logged and counted, not fatal.

    Lines longer than ``max_bytes`` are bad lines (``too_large``), as in ``run``.
    Only the fixed bounds on ``ts`` apply, not the window around now: a
    backtest replays the past.
    """
    for path in paths:
        name = str(path)
        with open(path, "rb") as handle:
            for lineno, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    event = decode_any(line, max_bytes)
                except Exception as exc:
                    # decode_any raises BadEvent only; anything else still costs one line.
                    reason = exc.reason if isinstance(exc, BadEvent) else "undecodable"
                    detail = exc.detail if isinstance(exc, BadEvent) \
                        else f"{type(exc).__name__}: {exc}"
                    stats.bad_lines += 1
                    log.warning("bad_line", file=name, line=lineno, reason=reason,
                                detail=detail[:200])
                    continue
                stats.events += 1
                yield event, Source(name, 0, lineno)


def replay(
    pipeline: Pipeline, paths: Iterable[str | Path], out: IO[bytes] | None = None,
    max_bytes: int | None = None, learn_until: float | None = None,
    bootstrap_s: float | None = None,
) -> tuple[list[Finding], ReplayStats]:
    """Run ``pipeline`` over ``paths``; write each finding as a JSON line to ``out``.

    Events before ``learn_until`` (event time), or within ``bootstrap_s`` of
    the first event, are learn-only: the detectors learn them, their findings
    are dropped and counted (the daemon's bootstrap on a first start).
    """
    stats = ReplayStats()
    findings: list[Finding] = []
    for event, source in read_events(paths, stats, max_bytes):
        ts: float = event.ts  # type: ignore[assignment]
        if bootstrap_s is not None and learn_until is None:
            learn_until = ts + bootstrap_s
        found = pipeline.process_many(event_type_of(event), 0, ((event, source),))
        if learn_until is not None and ts < learn_until:
            stats.learnt += 1
            stats.suppressed += len(found)
            continue
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
    learn_until: float | None = None, bootstrap_s: float | None = None,
) -> int:
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        for p in missing:
            print(f"mlwatchd replay: no such file: {p}", file=sys.stderr)
        return 2
    _, stats = replay(pipeline, paths, sys.stdout.buffer, max_bytes, learn_until, bootstrap_s)
    log.info("replay_done", events=stats.events, bad_lines=stats.bad_lines,
             findings=stats.findings, learnt=stats.learnt, suppressed=stats.suppressed)
    return 0
