"""Routes events to the configured detectors; the same object serves run and replay.

Partition-scoped detectors get one instance per *state partition* (the Kafka
partition number: input topics are co-partitioned by principal, see README),
so their state can move with the partition between replicas. Model-scoped
detectors get either one instance per process (``GLOBAL``: right for a single
replica), or, when the daemon repartitions inference events by model, one
instance per partition of the repartition topic (state partition
``StatePartition.model(r)``), which moves between replicas like any other.

Every detector's findings go through its :class:`~detectors.incidents.IncidentTable`
of the same state partition: one incident per (detector, entity); a repeat is
an update of the open incident, emitted only on escalation or periodically
(:class:`~detectors.incidents.IncidentPolicy`, per detector in
``DetectorSpec.incidents``). Snapshots carry each detector's open incidents
with its state, so a restart keeps them.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from detectors.base import Detector
from detectors.columns import Run
from detectors.context import ContextTable, InMemoryContextTable
from detectors.events import Event, event_type_of
from detectors.findings import Finding, Source
from detectors.incidents import DEFAULT_POLICY, IncidentPolicy, IncidentTable
from detectors.registry import REGISTRY, build
from detectors.state import CapPool, StateBudget

__all__ = ["GLOBAL", "DetectorSpec", "Pipeline", "StatePartition"]


@dataclass(frozen=True)
class DetectorSpec:
    """A detector as config names it: registry name, params, and optionally the
    models (glob patterns on ``model_id``) whose inference events it sees."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    models: tuple[str, ...] | None = None
    #: How its findings group into incidents (not part of the detector's params).
    incidents: IncidentPolicy = DEFAULT_POLICY

    def model_filter(self) -> Callable[[str], bool] | None:
        if self.models is None:
            return None
        pattern = re.compile("|".join(fnmatch.translate(m) for m in self.models) or "(?!)")
        return lambda model_id: pattern.match(model_id) is not None

    def build(self) -> Detector:
        return build(self.name, self.params)


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class StatePartition:
    """Whose detector state: an input partition, a model partition, or the process.

    - ``StatePartition.input(n)``: the partition-scoped detectors of input
      partition ``n`` (co-partitioned input topics share the number);
    - ``StatePartition.model(r)``: the model-scoped detectors fed by partition
      ``r`` of the repartition topic;
    - ``GLOBAL``: the model-scoped detectors of this process (no repartitioning).

    :attr:`code` is the integer that names it in checkpoints (``n``, ``-2 - r``,
    ``-1``), unchanged from the releases that used bare integers, so their
    checkpoints stay readable. Ordered by that code.

    >>> StatePartition.model(5), StatePartition.from_code(-7), str(StatePartition.input(3))
    (StatePartition(kind='model', index=5), StatePartition(kind='model', index=5), 'p3')
    """

    kind: Literal["input", "model", "global"]
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("input", "model", "global") or self.index < 0 \
                or (self.kind == "global" and self.index != 0):
            raise ValueError(f"not a state partition: {self.kind} {self.index}")

    @classmethod
    def input(cls, partition: int) -> StatePartition:
        return cls("input", partition)

    @classmethod
    def model(cls, repartition: int) -> StatePartition:
        return cls("model", repartition)

    @classmethod
    def from_code(cls, code: int) -> StatePartition:
        """The partition a checkpoint's integer names (see :attr:`code`)."""
        if code >= 0:
            return cls("input", code)
        return cls("global") if code == -1 else cls("model", -2 - code)

    @property
    def code(self) -> int:
        if self.kind == "input":
            return self.index
        return -1 if self.kind == "global" else -2 - self.index

    @property
    def is_model(self) -> bool:
        """True for a repartition topic's partition (not for GLOBAL)."""
        return self.kind == "model"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, StatePartition):
            return NotImplemented
        return self.code < other.code

    def __str__(self) -> str:
        """``p3`` for input partition 3, ``m2`` for repartition partition 2, ``global``."""
        if self.kind == "global":
            return "global"
        return f"{'p' if self.kind == 'input' else 'm'}{self.index}"


#: The model-scoped detector set of this process (without repartitioning).
GLOBAL: Final = StatePartition("global")


#: Input partitions by number, made once (``process`` runs per event in replay).
_INPUTS: dict[int, StatePartition] = {}


def _partition(partition: StatePartition | int) -> StatePartition:
    """A bare int is an input partition number (what ``Source.partition`` holds)."""
    if isinstance(partition, StatePartition):
        return partition
    found = _INPUTS.get(partition)
    if found is None:
        found = _INPUTS[partition] = StatePartition.input(partition)  # refuses a negative
    return found


#: Prefix of a snapshot entry holding a detector's state and its open incidents.
_WRAPPED = b"MLWINC1\x00"
_LEN = struct.Struct(">Q")


def _wrap(state: bytes, incidents: bytes) -> bytes:
    return _WRAPPED + _LEN.pack(len(state)) + state + incidents


def _unwrap(raw: bytes) -> tuple[bytes, bytes | None]:
    """(detector state, incident state or None); a bare detector state (older
    checkpoints) is taken as it is."""
    if not raw.startswith(_WRAPPED) or len(raw) < len(_WRAPPED) + _LEN.size:
        return raw, None
    start = len(_WRAPPED) + _LEN.size
    (size,) = _LEN.unpack_from(raw, len(_WRAPPED))
    if start + size > len(raw):
        return raw, None
    return raw[start:start + size], raw[start + size:]


class _Set:
    """Detectors of one state partition, indexed by the event type they want,
    and their open incidents (detector name -> table)."""

    __slots__ = ("by_type", "detectors", "incidents")

    def __init__(self, detectors: list[Detector],
                 incidents: dict[str, IncidentTable] | None = None) -> None:
        self.detectors = detectors
        self.incidents = incidents if incidents is not None else {}
        self.by_type: dict[str, list[Detector]] = {
            kind: [d for d in detectors if kind in d.event_types]
            for kind in ("inference", "audit", "access")
        }


class Pipeline:
    """Feeds each event to the detectors that want it and gathers their findings."""

    def __init__(
        self,
        specs: Sequence[DetectorSpec],
        on_error: Callable[[Detector, Event | None, Exception], None] | None = None,
        repartitioned: bool = False,
        context: ContextTable | None = None,
        max_state_bytes: int | None = None,
    ) -> None:
        self.specs = list(specs)
        #: ``state.max_state_mb``: one memory budget for all detectors' entity tables.
        self.budget = StateBudget(max_state_bytes) if max_state_bytes else None
        #: Cross-actor context (pipeline runs) shared by every detector instance;
        #: the daemon passes the context topic's table, in-process runs share this one.
        self.context: ContextTable = context if context is not None else InMemoryContextTable()
        for spec in self.specs:
            build(spec.name, spec.params).prepare()  # validates: bad config fails at start
        self._filters = {s.name: s.model_filter() for s in self.specs}
        self._partition_specs = [s for s in self.specs if REGISTRY[s.name].scope == "partition"]
        self._model_specs = [s for s in self.specs if REGISTRY[s.name].scope == "model"]
        self._sets: dict[StatePartition, _Set] = {}
        #: Repartitioned: model-scoped detectors live in model partitions instead.
        self.repartitioned = repartitioned
        #: Detector name -> its tables' cap pools: memory caps hold per process,
        #: shared by the detector's instances of every partition.
        self._pools: dict[str, dict[str, CapPool]] = {}
        self._policies = {s.name: s.incidents for s in self.specs}
        #: Detector name -> cap pool of its open incidents (all partitions).
        self._incident_pools = {s.name: CapPool(s.incidents.max_open) for s in self.specs}
        self._global = self._new_set([] if repartitioned else self._model_specs)
        self._on_error = on_error
        self.errors = 0

    def _build(self, specs: Sequence[DetectorSpec]) -> list[Detector]:
        built = []
        for spec in specs:
            detector = spec.build()
            detector.share_caps(self._pools.setdefault(spec.name, {}))
            bind = getattr(detector, "bind_context", None)
            if bind is not None:
                bind(self.context)
            built.append(detector)
        return built

    def _new_set(self, specs: Sequence[DetectorSpec]) -> _Set:
        return _Set(self._build(specs),
                    {s.name: IncidentTable(s.incidents, self._incident_pools[s.name])
                     for s in specs})

    def _set(self, partition: StatePartition) -> _Set:
        found = self._sets.get(partition)
        if found is None:
            specs = self._model_specs if partition.is_model else self._partition_specs
            found = self._sets[partition] = self._new_set(specs)
        return found

    def uses_context(self) -> bool:
        """True if some configured detector reads or publishes the context table."""
        return any(hasattr(REGISTRY[s.name], "bind_context") for s in self.specs)

    def use_context(self, context: ContextTable) -> None:
        """Share ``context`` instead (the daemon's Kafka-backed table), also with the
        detectors already built."""
        self.context = context
        for _, detector in self.detectors():
            bind = getattr(detector, "bind_context", None)
            if bind is not None:
                bind(context)

    def has_model_scope(self) -> bool:
        """True if some model-scoped detector is configured."""
        return bool(self._model_specs)

    def model_scope_wants(self, model_id: str) -> bool:
        """True if some model-scoped detector takes this model's inference events."""
        for spec in self._model_specs:
            wanted = self._filters.get(spec.name)
            if wanted is None or wanted(model_id):
                return True
        return False

    def process(self, event: Event, source: Source) -> list[Finding]:
        """Findings triggered by ``event``; a detector that raises is reported, not fatal."""
        return self.process_many(event_type_of(event), source.partition, ((event, source),))

    def process_many(
        self, kind: str, partition: StatePartition | int, items: Iterable[tuple[Event, Source]],
        *, admit: bool = True,
    ) -> list[Finding]:
        """Findings of a run of events of one kind from one partition.

        ``admit=False`` (learn-only history, :class:`daemon.replay.LearnOnly`):
        the findings are returned as the detectors made them and open or update
        no incident, so a finding that is dropped never makes a later one an
        update of an incident nobody saw, or absorbs it.

        Each detector takes the whole run at once (``process_batch``), in
        order. An event a detector fails on is reported (``on_error``,
        ``errors``) and costs only that event: the detector goes on with the
        rest of the run, and the other detectors and the stream go on.
        """
        own = self._set(_partition(partition))
        detectors = [(d, own) for d in own.by_type[kind]] + \
            [(d, self._global) for d in self._global.by_type[kind]]
        findings: list[Finding] = []
        if not detectors:
            for _ in items:  # still drain: the caller's generator dead-letters bad ones
                pass
            return findings
        # One Run for every detector: columns it computes once serve them all.
        run = items if type(items) is Run else Run(items)
        for detector, group in detectors:
            wanted = self._filters.get(detector.name) if kind == "inference" else None
            mine = run if wanted is None else [it for it in run if wanted(it[0].model_id)]  # type: ignore[union-attr]
            try:
                out = detector.process_batch(mine, self._event_error_sink(detector))
            except Exception as exc:  # a detector bug must not stop the stream
                self.errors += 1
                if self._on_error is not None:
                    self._on_error(detector, run[0][0] if run else None, exc)
                continue
            if out:
                incidents = group.incidents.get(detector.name) if admit else None
                if incidents is None:
                    findings.extend(out)
                    continue
                for finding in out:
                    emitted = incidents.admit(finding)
                    if emitted is not None:
                        findings.append(emitted)
        if self.budget is not None:
            self.budget.maybe_rebalance(p for ps in self._pools.values() for p in ps.values())
        return findings

    def state_evictions(self) -> dict[str, int]:
        """Detector name -> entries its entity tables evicted in this process (any cause:
        a table's cap, or the memory budget); only grows."""
        return {name: sum(p.evicted for p in pools.values())
                for name, pools in self._pools.items()}

    def _event_error_sink(self, detector: Detector) -> Callable[[Event, Exception], None]:
        def failed(event: Event, exc: Exception) -> None:
            self.errors += 1
            if self._on_error is not None:
                self._on_error(detector, event, exc)

        return failed

    def detectors(self) -> Iterator[tuple[StatePartition, Detector]]:
        """(state partition, detector) pairs; model-scoped ones under ``GLOBAL``."""
        for partition, group in self._sets.items():
            for detector in group.detectors:
                yield partition, detector
        for detector in self._global.detectors:
            yield GLOBAL, detector

    def incident_stats(self) -> dict[str, dict[str, int]]:
        """Detector name -> incident counters summed over partitions (see IncidentTable.stats)."""
        out: dict[str, dict[str, int]] = {}
        for group in [*self._sets.values(), self._global]:
            for name, table in group.incidents.items():
                acc = out.setdefault(name, {})
                for k, v in table.stats().items():
                    acc[k] = acc.get(k, 0) + v
        return out

    # -- state handoff -----------------------------------------------------

    def partitions(self) -> list[StatePartition]:
        return sorted(self._sets)

    def snapshot(self, partition: StatePartition | int) -> dict[str, bytes]:
        """State of one state partition (or GLOBAL), detector name -> bytes.

        Each entry holds the detector's state and its open incidents together,
        so both follow the detector's config fingerprint in checkpoints.
        """
        partition = _partition(partition)
        group = self._global if partition == GLOBAL else self._sets.get(partition)
        if group is None:
            return {}
        out: dict[str, bytes] = {}
        for d in group.detectors:
            incidents = group.incidents.get(d.name)
            out[d.name] = d.snapshot() if incidents is None else \
                _wrap(d.snapshot(), incidents.snapshot())
        return out

    def restore(self, partition: StatePartition | int,
                states: Mapping[str, bytes]) -> list[tuple[str, str]]:
        """Load saved state into a partition's detectors (unknown names are ignored).

        A detector whose entry cannot be read (another state version, a type
        this release does not know, corrupt bytes) starts afresh and relearns;
        the others restore normally. Returns (detector name, reason) of each
        one that started afresh, for the caller to log and count.
        """
        partition = _partition(partition)
        group = self._global if partition == GLOBAL else self._set(partition)
        failed: list[tuple[str, str]] = []
        for index, detector in enumerate(group.detectors):
            raw = states.get(detector.name)
            if raw is None:
                continue
            state, incidents = _unwrap(raw)
            table = group.incidents.get(detector.name)
            try:
                detector.restore(state)
                if incidents is not None and table is not None:
                    table.restore(incidents)
            except Exception as exc:
                failed.append((detector.name, str(getattr(exc, "reason", "corrupt"))))
                spec = next(s for s in self.specs if s.name == detector.name)
                detector.release_caps()
                fresh = self._build([spec])[0]
                group.detectors[index] = fresh
                for wanted in group.by_type.values():
                    wanted[:] = [fresh if d is detector else d for d in wanted]
                if table is not None:
                    table.release()
                    group.incidents[detector.name] = IncidentTable(
                        spec.incidents, self._incident_pools[spec.name])
        return failed

    def drop(self, partition: StatePartition | int) -> None:
        """Forget a partition's state (after it was revoked and checkpointed)."""
        dropped = self._sets.pop(_partition(partition), None)
        for detector in dropped.detectors if dropped is not None else ():
            detector.release_caps()
        for table in dropped.incidents.values() if dropped is not None else ():
            table.release()
