"""What the per-principal query detectors share: batching, cooldown, findings.

:class:`BatchedQueryDetector` keeps, per (principal, model), the rows of the
principal's latest queries in the model's layout (:class:`ModelSpace`) and
hands them to :meth:`BatchedQueryDetector.judge_run` ``batch_size`` at a time,
all the batches a polled run filled at once, so the numpy work (distances,
hashing, tests) is paid once per run and model and the per-event cost stays a
few dictionary operations. Detection is therefore
delayed by at most ``batch_size - 1`` queries. A principal that has fired is
quiet for ``cooldown_seconds`` of event time: one finding per incident.

Exact repeats: detectors with ``skip_repeats`` drop a query whose features
equal one of the principal's last ``repeat_memory`` distinct queries before it
reaches a batch. A retry or a resubmitted record tells an attacker nothing new,
while to a distance test it looks like a perfect near-duplicate (float32
distances between equal rows are not exactly 0, so this is decided on the
values, not on a distance). Skipped queries are counted in ``stats()``.

Pending rows are compact: each event's features are converted once to a
read-only float64 vector (:func:`compact_row`) that every detector batching
the event shares, instead of keeping the event's list of Python floats alive
(~2.1 KB per row at 64 features, ~0.6 KB compact; float64, the precision the
batch's matrix had, so every distance is the same as before). Recent-query
hashes are a ring of 8-byte values in a ``bytearray`` (:func:`recent_seen`),
not a dict (~1.1 KB instead of ~8.8 KB for 128 hashes).

Both tables are :class:`EntityTable` s: a flood of new principal (or model)
ids evicts the least recently seen ones and is counted in ``stats()``.
Peer baselines shared across partitions are in :mod:`detectors.abuse.peers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

import numpy as np

from detectors.abuse.space import ModelSpace, stable_seed
from detectors.base import Detector, EventErrorSink
from detectors.events import Event, InferenceEvent
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import Cooldown, EntityTable

__all__ = [
    "ATLAS_EXTRACTION",
    "ATLAS_PROBING",
    "ATLAS_VOLUME",
    "BatchedQueryDetector",
    "Judgement",
    "QueryState",
    "QuietCooldown",
    "by_model",
    "compact_row",
    "principal_finding",
    "recent_seen",
]

ATLAS_EXTRACTION: Final = ["AML.T0024.002", "AML.T0005.001", "AML.T0040"]
ATLAS_PROBING: Final = ["AML.T0043.001", "AML.T0015", "AML.T0042"]
ATLAS_VOLUME: Final = ["AML.T0029", "AML.T0034", "AML.T0040"]


#: dtype of pending rows (the raw features, before standardising). float32 would
#: halve them but move distances between near-duplicate queries (probing) in the
#: 4th digit: tests/abuse/test_old_checkpoints.py holds them to the old release's.
ROW_DTYPE: Final = np.float64
#: id(row object) -> (the row object, its compact vector): the events of the run
#: being processed, so the detectors that batch one event share one vector.
_COMPACT: dict[int, tuple[object, np.ndarray]] = {}
_COMPACT_CAP: Final = 4096  # > a poll's events (kafka.max_poll_records, 2000)


def compact_row(row: Sequence[float]) -> np.ndarray:
    """``row`` as a read-only float64 vector, the same object for the same ``row``.

    >>> r = [1.5, 2.0]
    >>> v = compact_row(r)
    >>> v.dtype.name, v.tolist(), compact_row(r) is v, v.flags.writeable
    ('float64', [1.5, 2.0], True, False)
    """
    key = id(row)
    hit = _COMPACT.get(key)
    if hit is not None and hit[0] is row:
        return hit[1]
    vec = np.array(row, dtype=ROW_DTYPE)
    vec.flags.writeable = False
    if len(_COMPACT) >= _COMPACT_CAP:
        _COMPACT.clear()
    _COMPACT[key] = (row, vec)
    return vec


_HEADER: Final = 8  # the ring's first 8 bytes: hashes ever added


def recent_seen(ring: bytearray, h: int, memory: int) -> bool:
    """True if hash ``h`` is among the last ``memory`` distinct hashes of ``ring``;
    else adds it (the oldest drops out when full). ``ring`` starts empty.

    The ring is the recent-queries FIFO of :class:`QueryState` as 8-byte
    values after an 8-byte count: the same answers as the dict it replaced
    (a repeat is not added again), at 8 bytes per hash.

    >>> ring = bytearray()
    >>> [recent_seen(ring, h, 2) for h in (5, 6, 5, 7, 5, 7, 6)]
    [False, False, True, False, False, True, False]
    """
    b = h.to_bytes(8, "little", signed=True)
    at = ring.find(b, _HEADER)
    while at >= 0:
        if (at - _HEADER) % 8 == 0:
            return True
        at = ring.find(b, at + 1)
    if not ring:
        ring += bytes(_HEADER)
    n = int.from_bytes(ring[:_HEADER], "little")
    slot = _HEADER + (n % memory) * 8
    if slot == len(ring):
        ring += b
    else:
        ring[slot : slot + 8] = b
    ring[:_HEADER] = (n + 1).to_bytes(_HEADER, "little")
    return False


def _ring_of(recent: object, memory: int) -> bytearray:
    """The ring of a restored state: a dict of hashes (older checkpoints) converted."""
    if isinstance(recent, bytearray):
        return recent
    ring = bytearray()
    for h in list(recent)[-memory:]:  # type: ignore[call-overload]
        recent_seen(ring, h, memory)
    return ring


class QuietCooldown(Cooldown):
    """The abuse states' :class:`~detectors.state.Cooldown`.

    Their checkpoints written before it (main c992264 and earlier) name the
    field ``quiet_until``: restoring one sets ``cooldown_until`` through this
    alias (``tests/abuse/test_old_checkpoints.py``).
    """

    __slots__ = ()

    @property
    def quiet_until(self) -> float:
        return self.cooldown_until

    @quiet_until.setter
    def quiet_until(self, value: float) -> None:
        self.cooldown_until = value


class QueryState(QuietCooldown):
    """Per (principal, model) base state: pending rows, counts, cooldown."""

    __slots__ = ("examined", "fired", "recent", "rows")

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Any] = []  # pending rows (compact_row vectors)
        #: Hashes of the latest distinct queries (see recent_seen); a dict in
        #: checkpoints before the ring, converted on first use.
        self.recent: bytearray = bytearray()
        self.examined = 0  # queries judged so far
        self.fired = 0  # findings emitted so far


class Judgement:
    """One principal's full batch of rows, due for judging.

    ``taken`` is what :meth:`BatchedQueryDetector.take` moved out of the state
    with the rows (e.g. the batch's predictions).
    """

    __slots__ = ("event", "rows", "source", "space", "st", "taken")

    def __init__(
        self,
        st: QueryState,
        space: ModelSpace,
        event: InferenceEvent,
        source: Source,
        rows: list[Any],
        taken: Any,
    ) -> None:
        self.st = st
        self.space = space
        self.event = event
        self.source = source
        self.rows = rows
        self.taken = taken


class BatchedQueryDetector(Detector):
    """Base of the abuse detectors that judge feature vectors in batches.

    A polled run of events is first sorted into per-principal batches (a few
    dictionary operations per event); the batches that fill up are then judged
    together by :meth:`judge_run`, which does the numpy work once per run and
    model instead of once per principal (one feature matrix, one embedding,
    stacked distance products). :meth:`process` is the same code with a run of
    one event, so both give identical results: each computation a batch's
    result depends on has the same shape whether it is judged alone or with
    others (stacked matrix products compute each slice as a lone product would).
    """

    event_types: ClassVar[frozenset[str]] = frozenset({"inference"})
    kind: ClassVar[str]
    atlas: ClassVar[list[str]]
    #: Drop exact repeats of the principal's recent queries (see the module doc).
    skip_repeats: ClassVar[bool] = False
    #: Scale features robustly in the model space (see :class:`ModelSpace`).
    robust_space: ClassVar[bool] = False
    #: Distinct recent queries per principal remembered to recognise repeats.
    repeat_memory: int = 128
    repeats_skipped: int = 0

    def _setup(
        self,
        *,
        batch_size: int,
        cooldown_seconds: float,
        max_principals: int,
        calibration_rows: int,
        max_dims: int,
        seed: int,
        max_models: int = 1024,
    ) -> None:
        if batch_size < 1 or max_principals < 1 or calibration_rows < 2 or max_dims < 1:
            raise ValueError("batch_size, max_principals, max_dims >= 1; calibration_rows >= 2")
        self.batch_size = batch_size
        self.cooldown_seconds = cooldown_seconds
        self.calibration_rows = calibration_rows
        self.max_dims = max_dims
        self.seed = seed
        self.table: EntityTable[QueryState] = EntityTable(max_principals)
        self.spaces: EntityTable[ModelSpace] = EntityTable(max_models)

    def new_state(self) -> QueryState:
        return QueryState()

    def remember(self, st: QueryState, event: InferenceEvent) -> None:
        """Per-event extra bookkeeping (e.g. the prediction); keep it O(1)."""

    def take(self, st: QueryState) -> Any:
        """Move the per-batch extras kept by :meth:`remember` out of ``st``."""
        return None

    def judge_run(self, run: list[Judgement]) -> list[list[Finding] | None]:
        """Findings of each judgement of ``run`` (in event order, one per principal).

        Judgements are in the order their batches filled; no principal appears
        twice, so per-principal work may be done in any order, while state
        shared by principals (a model's index) must see them in order.
        """
        raise NotImplementedError

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        return self.process_batch(((event, source),)) or None

    def _space(self, event: InferenceEvent) -> ModelSpace:
        model = event.model_id
        return self.spaces.touch(
            model,
            lambda: ModelSpace(
                event.features,
                calibration_rows=self.calibration_rows,
                max_dims=self.max_dims,
                seed=stable_seed(self.seed, model),
                robust=self.robust_space,
            ),
        )

    def process_batch(
        self, items: Sequence[tuple[Event, Source]], on_error: EventErrorSink | None = None
    ) -> list[Finding]:
        """Findings of a polled run of events, in order (see the class docstring)."""
        spaces, batch_size = self.spaces, self.batch_size
        table = self.table
        # EntityTable.touch, inlined: a hit is a lookup and a move to the end.
        items_of, insert = table._items, table.insert
        remember, new_state, take = self.remember, self.new_state, self.take
        plain_remember = type(self).remember is BatchedQueryDetector.remember
        skip_repeats, memory, skipped = self.skip_repeats, self.repeat_memory, 0
        seen, compact = recent_seen, compact_row
        known: dict[str, tuple[ModelSpace, str, int]] = {}  # model -> (space, key suffix, dim)
        due: list[Judgement] = []
        for event, source in items:
            try:
                if type(event) is not InferenceEvent:
                    raise TypeError(f"{self.name} takes inference events only")
                model = event.model_id
                entry = known.get(model)
                if entry is None:
                    space = spaces.get(model)
                    if space is None:
                        known.clear()  # a new model space may evict one: cached ones may be stale
                        space = self._space(event)
                    dim = space.dim if space.names is None else -1  # -1: always space.row
                    entry = known[model] = (space, "\x1f" + model, dim)
                space, suffix, dim = entry
                features = event.features
                row: Sequence[float]
                if type(features) is list and len(features) == dim:
                    row = features
                else:
                    row = space.row(features)
                if space.centre is None:
                    # Calibration: the model's first rows fix its scale; not judged.
                    space.observe(row)
                    continue
                key = event.principal + suffix
                st = items_of.get(key)
                if st is None:
                    st = insert(key, new_state())
                else:
                    items_of.move_to_end(key)
                if skip_repeats:
                    recent = st.recent
                    if type(recent) is not bytearray:
                        recent = st.recent = _ring_of(recent, memory)
                    if seen(recent, hash(tuple(row)), memory):
                        skipped += 1
                        continue
                rows = st.rows
                rows.append(compact(row))
                if not plain_remember:
                    remember(st, event)
                if len(rows) < batch_size:
                    continue
                spaces.touch(model, lambda: space)  # noqa: B023 (called at once, if at all)
                due.append(Judgement(st, space, event, source, rows, take(st)))
                st.rows = []
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(event, exc)
        if skipped:
            self.repeats_skipped += skipped
        return self._judge_due(due, on_error) if due else []

    def _judge_due(
        self, due: list[Judgement], on_error: EventErrorSink | None = None
    ) -> list[Finding]:
        """Judge ``due`` in runs without a repeated principal, findings in order."""
        out: list[Finding] = []
        run: list[Judgement] = []
        seen: set[int] = set()
        for j in due:
            if id(j.st) in seen:
                out.extend(self._judged(run, on_error))
                run, seen = [], set()
            run.append(j)
            seen.add(id(j.st))
        out.extend(self._judged(run, on_error))
        return out

    def _judged(
        self, run: list[Judgement], on_error: EventErrorSink | None = None
    ) -> list[Finding]:
        try:
            return [f for found in self.judge_run(run) if found for f in found]
        except Exception as exc:
            if on_error is None:
                raise
            if len(run) == 1:
                on_error(run[0].event, exc)
                return []
        # One judgement of the run failed: judge each alone, so it costs only itself.
        return [f for j in run for f in self._judged([j], on_error)]

    def finding(
        self,
        st: QueryState,
        event: InferenceEvent,
        source: Source,
        *,
        severity: Severity,
        summary: str,
        evidence: Mapping[str, Any],
        kind: str | None = None,
    ) -> list[Finding]:
        """One finding about the principal; starts the cooldown.

        The finding id comes from the triggering event's position: a replay or a
        redelivery from a snapshot reproduces it, while a later incident of the
        same principal (even after its state was evicted) gets a new one.
        """
        st.start_cooldown(float(event.ts), self.cooldown_seconds)
        st.fired += 1
        return principal_finding(
            self.name, kind or self.kind, event, source,
            severity=severity, summary=summary, evidence=evidence, atlas=self.atlas,
        )

    def stats(self) -> dict[str, float]:
        return {
            "entities": len(self.table),
            "evicted_total": self.table.evicted,
            "models": len(self.spaces),
            "models_evicted_total": self.spaces.evicted,
            "repeats_skipped_total": self.repeats_skipped,
        }


def principal_finding(
    detector: str,
    kind: str,
    event: InferenceEvent,
    source: Source,
    *,
    severity: Severity,
    summary: str,
    evidence: Mapping[str, Any],
    atlas: list[str],
    id_key: str | None = None,
) -> list[Finding]:
    """The one finding about ``event``'s principal and model that ``source`` triggered."""
    return [
        Finding.build(
            detector=detector,
            kind=kind,
            severity=severity,
            entity=Entity("principal", event.principal),
            model_id=event.model_id,
            summary=summary,
            evidence=evidence,
            atlas=atlas,
            event_ts=float(event.ts),
            sources=[source],
            id_key=id_key,
        )
    ]


def by_model(run: list[Judgement]) -> list[list[int]]:
    """Positions of ``run``'s judgements grouped by model space, in order.

    >>> class J:
    ...     def __init__(self, space): self.space = space
    >>> by_model([J("a"), J("b"), J("a")])
    [[0, 2], [1]]
    """
    groups: dict[int, list[int]] = {}
    for i, j in enumerate(run):
        groups.setdefault(id(j.space), []).append(i)
    return list(groups.values())
