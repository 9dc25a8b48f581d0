"""The one interface every detector implements.

A detector is fed events one at a time, in order, and returns the findings the
event triggered (or None). It keeps its own state and can save and restore it
(``snapshot``/``restore``) so that a restart or a partition handoff loses no
baseline. Detectors do no I/O, read no wall clock (event time only) and are
deterministic for a given ``seed``.

Hyperparameters are keyword arguments of ``__init__`` with type hints and
immutable defaults; :func:`detectors.registry.build` validates a config's
params against that signature, so typos fail at start, not when an event comes.

What a snapshot holds is declared, not the whole object: ``state_fields``
names the attributes that are learnt (tables, baselines, counters), and
``state_version`` says which layout they have. Config-derived attributes are
never saved, so a release that changes a default takes effect on restart. A
snapshot of another version, or one that cannot be decoded, raises
:class:`~detectors.state_codec.StateUnreadable` and the caller starts that
detector afresh. Objects in the state are encoded by their stable
:func:`~detectors.state_codec.state_type` names, not their module paths.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, ClassVar, Literal, TypeAlias

from detectors.events import Event
from detectors.findings import Finding, Source
from detectors.state import CapPool, EntityTable
from detectors.state_codec import StateUnreadable, decode, encode

__all__ = ["Detector", "EventErrorSink", "Scope", "guarded"]

#: Told about one event a detector failed on: ``(event, exception)``.
EventErrorSink: TypeAlias = Callable[[Event, Exception], None]


def guarded(
    call: Callable[[Event, Source], list[Finding] | None],
    event: Event,
    source: Source,
    on_error: EventErrorSink | None,
) -> list[Finding] | None:
    """``call(event, source)``; an exception goes to ``on_error`` (then: no
    findings) or, without one, propagates. One bad event costs that event only."""
    try:
        return call(event, source)
    except Exception as exc:
        if on_error is None:
            raise
        on_error(event, exc)
        return None

#: Attribute under which a detector keeps its process-wide cap pools (never snapshotted).
_POOLS = "_cap_pools"

#: ``partition``: per-entity state (principal, resource) that lives with the
#: Kafka partition carrying the entity's events; one instance per partition.
#: ``model``: per-model state that needs the model's whole traffic; one
#: instance per process (see README, "Scaling out").
Scope: TypeAlias = Literal["partition", "model"]


class Detector(abc.ABC):
    """Base class of online detectors."""

    #: Registry name, dotted family.method, e.g. ``"extraction.prada"``.
    name: ClassVar[str]
    #: Event kinds this detector wants: subset of {"inference", "audit", "access"}.
    event_types: ClassVar[frozenset[str]]
    scope: ClassVar[Scope] = "partition"
    #: Layout of the saved state: bump it when ``state_fields`` or what they hold
    #: change meaning; a snapshot of another version is not restored (relearnt).
    state_version: ClassVar[int] = 1
    #: Attributes that are learnt from events and saved by :meth:`snapshot`;
    #: everything else is rebuilt from config by ``__init__``.
    state_fields: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def process(self, event: Event, source: Source) -> list[Finding] | None:
        """Learn from ``event`` and return the findings it triggers, if any.

        Must not mutate ``event``. Must tolerate absent optional fields.
        """

    def process_batch(
        self, items: Sequence[tuple[Event, Source]], on_error: EventErrorSink | None = None
    ) -> list[Finding]:
        """Findings of a run of events, in order; the same as calling :meth:`process`
        on each (the conformance suite checks it). Override to save per-event
        call overhead; the pipeline calls this once per polled batch.

        With ``on_error``, an event the detector fails on is handed to it and
        the run goes on with the next event (one bad event costs that event
        only); without, the exception propagates.
        """
        out: list[Finding] = []
        process = self.process
        for event, source in items:
            found = guarded(process, event, source, on_error)
            if found:
                out.extend(found)
        return out

    def prepare(self) -> None:  # noqa: B027 (an optional hook, empty by default)
        """One-time process set-up before the first event (e.g. JIT compilation).

        The pipeline calls it once per configured detector at start, so that a
        slow first use does not stall the consumer loop later.
        """

    def stats(self) -> dict[str, float]:
        """Gauges for /metrics, e.g. ``{"entities": 120, "evicted_total": 3}``.

        By default, the size and evictions of ``self.table`` (the
        :class:`~detectors.state.EntityTable` most detectors keep), if any.
        """
        table = getattr(self, "table", None)
        if isinstance(table, EntityTable):
            return {"entities": len(table), "evicted_total": table.evicted}
        return {}

    def share_caps(self, pools: MutableMapping[str, CapPool]) -> None:
        """Make the caps of this detector's entity tables per process, not per instance.

        ``pools`` (attribute name -> :class:`CapPool`) is shared by every
        instance of one configured detector in the process (the pipeline keeps
        it); each top-level :class:`EntityTable` attribute joins the pool of its
        name, created with that table's capacity.
        """
        self.__dict__[_POOLS] = pools
        for attr, table in list(self.__dict__.items()):
            if isinstance(table, EntityTable):
                pool = pools.get(attr)
                if pool is None:
                    pool = pools[attr] = CapPool(table.capacity)
                pool.join(table)

    def release_caps(self) -> None:
        """Leave the shared pools (the instance is dropped, e.g. a revoked partition)."""
        for table in self.__dict__.values():
            if isinstance(table, EntityTable) and table._pool is not None:
                table._pool.leave(table)

    def snapshot(self) -> bytes:
        """Serialised learnt state; :meth:`restore` on a fresh instance continues identically."""
        fields = {k: self.__dict__[k] for k in self.state_fields if k in self.__dict__}
        return encode({"detector": self.name, "version": self.state_version, "state": fields})

    def restore(self, state: bytes) -> None:
        """Load a :meth:`snapshot`; raises :class:`StateUnreadable` (and changes nothing)
        when it is of another version, names an unknown type or is corrupt."""
        # Snapshots are written and read only by mlwatchd itself (local disk or
        # its own compacted topic); see README "State" for the trust boundary.
        saved: Any = decode(state)
        if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
            raise StateUnreadable("corrupt", "not a detector snapshot")
        if saved.get("version") != self.state_version:
            raise StateUnreadable("version", f"state version {saved.get('version')!r}, "
                                  f"this {self.name} reads {self.state_version}")
        fields = {k: v for k, v in saved["state"].items() if k in self.state_fields}
        pools = self.__dict__.get(_POOLS)
        if pools is not None:
            self.release_caps()  # the tables being replaced give their room back
        self.__dict__.update(fields)
        if pools is not None:
            self.share_caps(pools)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
