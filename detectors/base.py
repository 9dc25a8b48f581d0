"""The one interface every detector implements.

A detector is fed events one at a time, in order, and returns the findings the
event triggered (or None). It keeps its own state and can save and restore it
(``snapshot``/``restore``) so that a restart or a partition handoff loses no
baseline. Detectors do no I/O, read no wall clock (event time only) and are
deterministic for a given ``seed``.

Hyperparameters are keyword arguments of ``__init__`` with type hints and
immutable defaults; :func:`detectors.registry.build` validates a config's
params against that signature, so typos fail at start, not when an event comes.
"""

from __future__ import annotations

import abc
import pickle
from collections.abc import Sequence
from typing import ClassVar, Literal, TypeAlias

from detectors.events import Event
from detectors.findings import Finding, Source
from detectors.state import EntityTable

__all__ = ["Detector", "Scope"]

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

    @abc.abstractmethod
    def process(self, event: Event, source: Source) -> list[Finding] | None:
        """Learn from ``event`` and return the findings it triggers, if any.

        Must not mutate ``event``. Must tolerate absent optional fields.
        """

    def process_batch(self, items: Sequence[tuple[Event, Source]]) -> list[Finding]:
        """Findings of a run of events, in order; the same as calling :meth:`process`
        on each (the conformance suite checks it). Override to save per-event
        call overhead; the pipeline calls this once per polled batch.
        """
        out: list[Finding] = []
        process = self.process
        for event, source in items:
            found = process(event, source)
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

    def snapshot(self) -> bytes:
        """Serialised state; :meth:`restore` on a fresh instance continues identically."""
        return pickle.dumps(self.__dict__, protocol=pickle.HIGHEST_PROTOCOL)

    def restore(self, state: bytes) -> None:
        # Snapshots are written and read only by mlwatchd itself (local disk or
        # its own compacted topic); see README "State" for the trust boundary.
        self.__dict__.update(pickle.loads(state))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
