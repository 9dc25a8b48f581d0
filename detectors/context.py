"""Context that spans actors: a small table every detector instance can read.

Partition state is keyed by principal, so a detector instance never sees the
events of principals on other partitions. Some facts are needed across them:
which pipeline runs are active and who started them (an orchestrator account
writes ``pipeline.run``; worker accounts change models under the same
``run_id``). Detectors that see such a fact publish it here; detectors on any
partition read it. In the daemon the table is a compacted, signed Kafka topic
that every replica reads whole (``daemon/context.py``, in the style of a Kafka
Streams GlobalKTable); in-process (tests, ``mlwatchd eval``, replay) it is
:class:`InMemoryContextTable`, shared by the pipeline's instances.

Records are facts, not verdicts: a run record says who started it, when, how
many runs that principal had started before and when the publisher began
watching; each reader judges with its own parameters.

>>> table = InMemoryContextTable()
>>> table.put_run(PipelineRun("r1", "svc-airflow", "pipeline:p", 100.0, None, 3, 0.0, 0.0))
>>> table.put_run(PipelineRun("r1", "svc-airflow", "pipeline:p", None, 900.0, 3, 0.0, 0.0))
>>> run = table.get_run("r1")
>>> run.start_ts, run.end_ts, table.high_water()
(100.0, 900.0, 900.0)
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any, Final, Protocol

__all__ = [
    "MAX_RUN_ID_CHARS",
    "ContextReader",
    "ContextTable",
    "InMemoryContextTable",
    "PipelineRun",
    "merge_runs",
    "run_from_dict",
    "run_verdict",
]

#: Longer run ids (attacker-chosen strings) are not context: ignored.
MAX_RUN_ID_CHARS: Final = 200


@dataclass(frozen=True)
class PipelineRun:
    """One pipeline run as its orchestrator's events describe it."""

    run_id: str
    orchestrator: str
    pipeline: str
    start_ts: float | None
    end_ts: float | None
    #: Runs the orchestrator had started before this one (as its partition saw).
    prior_runs: int
    #: Event time of the orchestrator's first run start seen.
    orchestrator_first_ts: float
    #: Event time the publishing detector instance began watching.
    watch_start_ts: float

    def last_ts(self) -> float:
        return max(t for t in (self.start_ts, self.end_ts, -math.inf) if t is not None)


def merge_runs(old: PipelineRun | None, new: PipelineRun) -> PipelineRun:
    """The union of two records of one run: earliest start, latest end.

    Records may arrive out of order (start and end published by different
    batches); the merge does not depend on their order.
    """
    if old is None:
        return new

    def pick(a: float | None, b: float | None, f: Any) -> float | None:
        return b if a is None else a if b is None else f(a, b)

    return replace(
        new,
        start_ts=pick(old.start_ts, new.start_ts, min),
        end_ts=pick(old.end_ts, new.end_ts, max),
        prior_runs=max(old.prior_runs, new.prior_runs) if new.start_ts is None
        else new.prior_runs,
    )


def run_from_dict(data: Any) -> PipelineRun:
    """A record decoded from the wire; raises ValueError on anything malformed."""
    if not isinstance(data, dict):
        raise ValueError("run record is not an object")

    def text(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value or len(value) > MAX_RUN_ID_CHARS * 5:
            raise ValueError(f"run record: bad {key}")
        return value

    def num(key: str, optional: bool = False) -> float | None:
        value = data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value
        ):
            raise ValueError(f"run record: bad {key}")
        return float(value)

    prior = data.get("prior_runs")
    if isinstance(prior, bool) or not isinstance(prior, int) or prior < 0:
        raise ValueError("run record: bad prior_runs")
    run = PipelineRun(
        run_id=text("run_id"), orchestrator=text("orchestrator"), pipeline=text("pipeline"),
        start_ts=num("start_ts", True), end_ts=num("end_ts", True), prior_runs=prior,
        orchestrator_first_ts=num("orchestrator_first_ts") or 0.0,
        watch_start_ts=num("watch_start_ts") or 0.0,
    )
    if len(run.run_id) > MAX_RUN_ID_CHARS:
        raise ValueError("run record: run_id too long")
    return run


def run_to_dict(run: PipelineRun) -> dict[str, Any]:
    return asdict(run)


class ContextTable(Protocol):
    """What detectors read and publish; implementations are thread-safe."""

    def get_run(self, run_id: str) -> PipelineRun | None:
        """The run's merged record, or None if no one published it (or it expired)."""

    def put_run(self, run: PipelineRun) -> None:
        """Publish (merge) a run record; visible to local readers at once."""

    def high_water(self) -> float:
        """Latest event time any record in the table carries (-inf when empty)."""


class InMemoryContextTable:
    """A bounded table of runs in one process.

    At most ``max_runs`` runs (least recently published dropped first); runs
    that ended more than ``ended_ttl_seconds`` (event time) before the
    table's high water, and runs that started more than ``open_ttl_seconds``
    before it without an end, expire.
    """

    def __init__(
        self,
        max_runs: int = 100_000,
        ended_ttl_seconds: float = 2 * 86400.0,
        open_ttl_seconds: float = 7 * 86400.0,
    ) -> None:
        if max_runs < 1:
            raise ValueError("max_runs must be >= 1")
        self.max_runs = max_runs
        self.ended_ttl_seconds = ended_ttl_seconds
        self.open_ttl_seconds = open_ttl_seconds
        self._runs: OrderedDict[str, PipelineRun] = OrderedDict()
        self._high = -math.inf
        self._lock = threading.Lock()
        self._puts = 0
        self.expired = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._runs)

    def get_run(self, run_id: str) -> PipelineRun | None:
        with self._lock:
            run = self._runs.get(run_id)
            return None if run is None or self._is_expired(run) else run

    def put_run(self, run: PipelineRun) -> None:
        if len(run.run_id) > MAX_RUN_ID_CHARS:
            return
        with self._lock:
            merged = merge_runs(self._runs.pop(run.run_id, None), run)
            self._runs[run.run_id] = merged
            self._high = max(self._high, merged.last_ts())
            while len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
            self._puts += 1
            if self._puts % 1024 == 0:
                self._expire()

    def high_water(self) -> float:
        return self._high

    def runs(self) -> list[PipelineRun]:
        with self._lock:
            return list(self._runs.values())

    def _is_expired(self, run: PipelineRun) -> bool:
        if run.end_ts is not None:
            return run.end_ts < self._high - self.ended_ttl_seconds
        return run.start_ts is not None and run.start_ts < self._high - self.open_ttl_seconds

    def _expire(self) -> None:
        for run_id in [k for k, r in self._runs.items() if self._is_expired(r)]:
            del self._runs[run_id]
            self.expired += 1


def run_verdict(
    run: PipelineRun,
    ts: float,
    min_orchestrator_runs: int,
    orchestrator_warmup_seconds: float,
    start_skew_seconds: float,
    end_grace_seconds: float,
    run_window_seconds: float,
) -> str | None:
    """None if an action at ``ts`` under ``run`` is expected; else the rule it breaks.

    The run must have been started by an established orchestrator (one that
    had started ``min_orchestrator_runs`` runs before, or whose first run came
    within ``orchestrator_warmup_seconds`` of the publisher's watch start) and
    ``ts`` must fall inside it (``start_skew_seconds`` before its start to
    ``end_grace_seconds`` after its end, or ``run_window_seconds`` after its
    start while it has not ended).

    >>> run = PipelineRun("r", "svc-airflow", "pipeline:p", 1000.0, 4000.0, 0, 0.0, 0.0)
    >>> [run_verdict(run, t, 2, 86400.0, 300.0, 900.0, 21600.0) for t in (800, 3000, 6000)]
    [None, None, 'outside_run']
    >>> late = replace(run, orchestrator_first_ts=2 * 86400.0)
    >>> run_verdict(late, 3000, 2, 86400.0, 300.0, 900.0, 21600.0)
    'unknown_orchestrator'
    """
    if run.start_ts is None:
        return "unknown_run"
    established = (
        run.prior_runs >= min_orchestrator_runs
        or run.orchestrator_first_ts - run.watch_start_ts <= orchestrator_warmup_seconds
    )
    if not established:
        return "unknown_orchestrator"
    end = (run.end_ts + end_grace_seconds if run.end_ts is not None
           else run.start_ts + run_window_seconds)
    if run.start_ts - start_skew_seconds <= ts <= end:
        return None
    return "outside_run"


class ContextReader:
    """Mixin of detectors that use the context table (put before ``Detector``).

    Unbound, an instance has a small table of its own (part of its snapshot,
    so a lone instance round-trips); :meth:`bind_context` shares the
    pipeline's (or the daemon's Kafka-backed) table, which snapshots leave out.
    """

    _context: ContextTable
    _context_bound: bool

    def _init_context(self) -> None:
        self._context = InMemoryContextTable(max_runs=1024)
        self._context_bound = False

    def bind_context(self, context: ContextTable) -> None:
        """Read and publish through ``context`` (shared by every instance)."""
        self._context = context
        self._context_bound = True

    def snapshot(self) -> bytes:
        parent: Any = super()
        if not self.__dict__.get("_context_bound"):
            return bytes(parent.snapshot())
        context = self.__dict__.pop("_context")
        try:
            return bytes(parent.snapshot())
        finally:
            self._context = context

    def restore(self, state: bytes) -> None:
        parent: Any = super()
        bound = self.__dict__.get("_context_bound", False)
        context = self._context
        parent.restore(state)
        if bound:
            self._context, self._context_bound = context, True
