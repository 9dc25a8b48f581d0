"""What the per-principal query detectors share: batching, cooldown, findings.

:class:`BatchedQueryDetector` keeps, per (principal, model), the rows of the
principal's latest queries in the model's layout (:class:`ModelSpace`) and
hands them to :meth:`BatchedQueryDetector.judge` ``batch_size`` at a time, so
the numpy work (distances, hashing, tests) is paid once per batch and the
per-event cost stays a few dictionary operations. Detection is therefore
delayed by at most ``batch_size - 1`` queries. A principal that has fired is
quiet for ``cooldown_seconds`` of event time: one finding per incident.

Both tables are :class:`EntityTable` s: a flood of new principal (or model)
ids evicts the least recently seen ones and is counted in ``stats()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from detectors.abuse.space import ModelSpace, stable_seed
from detectors.base import Detector
from detectors.events import Event, InferenceEvent
from detectors.findings import Entity, Finding, Severity, Source
from detectors.state import EntityTable

__all__ = [
    "ATLAS_EXTRACTION",
    "ATLAS_PROBING",
    "ATLAS_VOLUME",
    "BatchedQueryDetector",
    "QueryState",
]

ATLAS_EXTRACTION: Final = ["AML.T0024.002", "AML.T0005.001", "AML.T0040"]
ATLAS_PROBING: Final = ["AML.T0043.001", "AML.T0015", "AML.T0042"]
ATLAS_VOLUME: Final = ["AML.T0029", "AML.T0034"]


class QueryState:
    """Per (principal, model) base state: pending rows, counts, cooldown."""

    __slots__ = ("examined", "fired", "quiet_until", "rows")

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.examined = 0  # queries judged so far
        self.fired = 0  # findings emitted so far
        self.quiet_until = float("-inf")


class BatchedQueryDetector(Detector):
    """Base of the abuse detectors that judge feature vectors in batches."""

    event_types: ClassVar[frozenset[str]] = frozenset({"inference"})
    kind: ClassVar[str]
    atlas: ClassVar[list[str]]

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

    def judge(
        self, st: QueryState, space: ModelSpace, event: InferenceEvent, source: Source
    ) -> list[Finding] | None:
        raise NotImplementedError

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        assert isinstance(event, InferenceEvent)
        model = event.model_id
        space = self.spaces.get(model)
        if space is None:
            space = self.spaces.touch(
                model,
                lambda: ModelSpace(
                    event.features,
                    calibration_rows=self.calibration_rows,
                    max_dims=self.max_dims,
                    seed=stable_seed(self.seed, model),
                ),
            )
        row = space.row(event.features)
        if space.centre is None:
            # Calibration: the model's first rows fix its scale; not judged.
            space.observe(row)
            return None
        st = self.table.touch(f"{event.principal}\x1f{model}", self.new_state)
        st.rows.append(row)
        self.remember(st, event)
        if len(st.rows) < self.batch_size:
            return None
        self.spaces.touch(model, lambda: space)  # keep the model recently used
        found = self.judge(st, space, event, source)
        st.rows = []
        return found

    def process_batch(self, items: Sequence[tuple[Event, Source]]) -> list[Finding]:
        """:meth:`process` over a run of events, without a method call per event."""
        out: list[Finding] = []
        spaces, table, batch_size = self.spaces, self.table, self.batch_size
        remember, new_state = self.remember, self.new_state
        for event, source in items:
            assert isinstance(event, InferenceEvent)
            model = event.model_id
            space = spaces.get(model)
            if space is None:
                found = self.process(event, source)  # first sight of a model: the slow path
                if found:
                    out.extend(found)
                continue
            row = space.row(event.features)
            if space.centre is None:
                space.observe(row)
                continue
            st = table.touch(f"{event.principal}\x1f{model}", new_state)
            st.rows.append(row)
            remember(st, event)
            if len(st.rows) < batch_size:
                continue
            spaces.touch(model, lambda: space)  # noqa: B023 (called at once, if at all)
            found = self.judge(st, space, event, source)
            st.rows = []
            if found:
                out.extend(found)
        return out

    def quiet(self, st: QueryState, ts: float) -> bool:
        return ts < st.quiet_until

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
        ts = float(event.ts)
        st.quiet_until = ts + self.cooldown_seconds
        st.fired += 1
        return [
            Finding.build(
                detector=self.name,
                kind=kind or self.kind,
                severity=severity,
                entity=Entity("principal", event.principal),
                model_id=event.model_id,
                summary=summary,
                evidence=evidence,
                atlas=self.atlas,
                event_ts=ts,
                sources=[source],
            )
        ]

    def stats(self) -> dict[str, float]:
        return {
            "entities": len(self.table),
            "evicted_total": self.table.evicted,
            "models": len(self.spaces),
            "models_evicted_total": self.spaces.evicted,
        }


def window_push(bits: int, flag: bool, width: int) -> int:
    """The last ``width`` flags as the bits of an int, newest in bit 0.

    >>> b = 0
    >>> for f in (1, 1, 0, 1):
    ...     b = window_push(b, bool(f), 3)
    >>> b, b.bit_count()
    (5, 2)
    """
    return ((bits << 1) | flag) & ((1 << width) - 1)
