"""Per-model windows shared by the telemetry detectors.

Every telemetry detector follows the same life per model and version:

1. **Reference.** The first ``reference_size`` events of a (model_id,
   model_version) are its reference (or the events of that model in the JSON
   Lines file named by ``reference_path``, read once at construction). Nothing
   is judged before the reference is complete. A new version learns its own.
2. **Blocks.** Per event the detector only appends the event to the model's
   buffer. Every ``step`` events the buffer is summarised with numpy into a
   compact block (bin counts, sums, codes) and the raw events are dropped.
3. **Windows.** After each block, the last ``window // step`` blocks form a
   sliding window that is compared with the reference. A window beyond the
   threshold opens an *incident* and gives one finding; the incident closes
   after a full window of quiet evaluations, so one drift gives one finding.

Thresholds come from a false-alarm budget ``ert`` (expected events of one
model between false alarms on a stationary stream): the per-evaluation
false-positive rate is ``step / ert``. Each detector also requires a minimum
effect size, so that huge windows of trivially different data stay quiet.
``sample_every`` (default 1) judges one event in k: the block work, the
main per-event cost, falls about k-fold, windows and the reference then hold
1/k of the events and thresholds are computed for that size; detection
delays stay about the same in events for large effects and grow for small
ones. ``overrides`` maps a model_id to threshold parameters that replace the
detector's defaults for that model, e.g. in config::

    - name: drift.features
      params:
        ert: 1.0e8
        overrides: {fraud-scorer: {min_psi: 0.2}}
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Final

import numpy as np

from detectors.base import Detector, EventErrorSink, guarded
from detectors.columns import confident_segments, model_segments
from detectors.events import Event, InferenceEvent
from detectors.findings import Entity, Finding, Severity, Source
from detectors.limits import FEATURE_LIMIT
from detectors.state import EntityTable
from detectors.telemetry.features import plain
from detectors.telemetry.model_state import Block, ModelState
from detectors.telemetry.reference_file import load_reference_file, model_key

__all__ = [
    "FEATURE_LIMIT",
    "Block",
    "ModelState",
    "WindowedModelDetector",
    "model_key",
]

#: ATLAS ids when a change comes from one caller's traffic (evasion, crafted input).
ATLAS_EVASION: Final = ["AML.T0015", "AML.T0043"]


def check_window(reference_size: int, window: int, step: int, ert: float,
                 sample_every: int) -> None:
    """Raise ValueError unless the window settings make sense together."""
    if step < 1 or window < step or window % step:
        raise ValueError("step must be >= 1 and window a multiple of step")
    if reference_size < 2 * step:
        raise ValueError("reference_size must be at least 2 * step")
    if sample_every < 1 or sample_every > step:
        raise ValueError("sample_every must be between 1 and step")
    if ert <= step:
        raise ValueError("ert (expected events between false alarms) must exceed step")


def checked_overrides(
    overrides: Mapping[str, Mapping[str, float]] | None, allowed: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Per-model threshold overrides as plain dicts; ValueError on an unknown parameter."""
    out = {m: dict(p) for m, p in (overrides or {}).items()}
    for model, params in out.items():
        unknown = set(params) - set(allowed)
        if unknown:
            raise ValueError(
                f"overrides[{model!r}]: unknown {sorted(unknown)}; allowed: {allowed}"
            )
    return out


class WindowedModelDetector(Detector):
    """Base of the telemetry detectors: reference, blocks, sliding windows, incidents.

    Subclasses implement :meth:`summarise` (events -> block payload),
    :meth:`fit_reference` (reference blocks -> reference) and :meth:`evaluate`
    (window blocks -> finding or None). Not registered itself.
    """

    event_types: ClassVar[frozenset[str]] = frozenset({"inference"})
    scope: ClassVar = "model"
    state_fields: ClassVar[tuple[str, ...]] = ("table", "_hot", "_hot_evicted", "fit_failures")
    #: Threshold parameters a per-model override may set.
    overridable: ClassVar[tuple[str, ...]] = ("ert",)
    #: Skip events without ``confidence`` (confidence and performance detectors).
    needs_confidence: ClassVar[bool] = False

    def __init__(
        self,
        *,
        reference_size: int,
        window: int,
        step: int,
        ert: float,
        sample_every: int,
        max_models: int,
        reference_path: str | None,
        overrides: Mapping[str, Mapping[str, float]] | None,
        seed: int,
    ) -> None:
        check_window(reference_size, window, step, ert, sample_every)
        self.reference_size = reference_size
        self.window = window
        self.sample_every = sample_every
        #: Events a full window holds after sampling: what thresholds are computed for.
        self.window_rows = window // sample_every
        self.step = step
        self.ert = ert
        self.seed = seed
        self.overrides = checked_overrides(overrides, self.overridable)
        self.table: EntityTable[ModelState] = EntityTable(max_models)
        #: model_id -> its most recently used state (any version): the hot path.
        self._hot: dict[str, ModelState] = {}
        self._hot_evicted = 0
        #: Reference fits that failed (each restarted its model's reference).
        self.fit_failures = 0
        self._file_refs: dict[str, Any] = {}
        if reference_path is not None:
            for key, events in load_reference_file(reference_path, reference_size).items():
                first = events[0]
                state = self._new_state(first.model_id, first.model_version, use_file=False)
                self._file_refs[key] = self._reference_from_events(state, events)

    # -- per event -----------------------------------------------------------------

    def process(self, event: Event, source: Source) -> list[Finding] | None:
        return self.process_batch(((event, source),)) or None

    def process_batch(
        self, items: Sequence[tuple[Event, Source]], on_error: EventErrorSink | None = None
    ) -> list[Finding]:
        """:meth:`process` over a run of events, a model segment at a time.

        Consecutive events of one model and version (:func:`model_segments`,
        computed once per run for every telemetry detector) go into the model's
        buffer a slice at a time; a block closes at each ``step`` events, with
        the event that filled it, as when they came one by one.
        """
        out: list[Finding] = []
        hot = self._hot
        step = self.step
        confident = confident_segments(items) if self.needs_confidence else None
        for index, segment in enumerate(model_segments(items)):
            if segment.model_id is None:  # not inference events
                continue
            st = hot.get(segment.model_id)
            if st is None or st.version != segment.model_version:
                st = self._state_of(items[segment.start][0])  # type: ignore[arg-type]
                hot = self._hot  # rebuilt when a model was evicted
            chunk = items[segment.start:segment.end] if confident is None else confident[index]
            at, n = 0, len(chunk)
            while at < n:
                buffered = st.items
                if not buffered:
                    st.first_source = chunk[at][1]
                part = chunk[at:at + max(step - len(buffered), 1)]
                buffered.extend([event for event, _ in part])  # type: ignore[misc]
                at += len(part)
                if len(buffered) >= step:
                    event, source = part[-1]
                    found = guarded(partial(self._close_block, st), event, source, on_error)
                    if found:
                        out.extend(found)
        return out

    # -- per block -----------------------------------------------------------------

    def _state_of(self, event: InferenceEvent) -> ModelState:
        key = model_key(event.model_id, event.model_version)
        st = self.table.touch(
            key, lambda: self._new_state(event.model_id, event.model_version, use_file=True)
        )
        # Evictions (also by other partitions' instances sharing the cap) make
        # the hot map stale: rebuild it from the table.
        if self.table.evicted != self._hot_evicted:
            self._hot = {s.model_id: s for _, s in self.table.items()}
            self._hot_evicted = self.table.evicted
        self._hot[event.model_id] = st
        return st

    def _new_state(self, model_id: str, version: str | None, *, use_file: bool) -> ModelState:
        params = {name: float(getattr(self, name)) for name in self.overridable}
        params.update(self.overrides.get(model_id, {}))
        st = ModelState(model_id, version, params)
        if use_file:
            ref = self._file_refs.get(st.key)
            if ref is None and version is not None:
                ref = self._file_refs.get(model_id)
            st.ref = ref
        return st

    def rng_for(self, st: ModelState) -> np.random.Generator:
        """A generator seeded by ``seed`` and the model key: repeatable per model."""
        return np.random.default_rng([self.seed, zlib.crc32(st.key.encode())])

    def _reference_from_events(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        if self.needs_confidence:
            events = [e for e in events if e.confidence is not None]
        blocks = [
            self._make_block(st, events[i : i + self.step])
            for i in range(0, len(events), self.step)
        ]
        return self.fit_reference(st, blocks)

    def _make_block(self, st: ModelState, events: list[InferenceEvent]) -> Block:
        if self.sample_every > 1:
            events = events[:: self.sample_every]
        return Block(len(events), [e.principal for e in events], self.summarise(st, events))

    def _close_block(
        self, st: ModelState, event: InferenceEvent, source: Source
    ) -> list[Finding] | None:
        events, st.items = st.items, []
        st.seen += len(events)
        self.table.touch(st.key, lambda: st)  # LRU recency, once per block
        block = self._make_block(st, events)
        if st.ref is None:
            try:
                st.learn(block, self.reference_size, self.fit_reference)
            except Exception:
                self.fit_failures += 1
                raise
            return None
        k = self.window // self.step
        if not st.slide(block, source, k):
            return None
        st.evaluations += 1
        finding = self.evaluate(st, list(st.blocks), event, source)
        return [finding] if st.settle(finding is not None, k) and finding is not None else None

    # -- for subclasses --------------------------------------------------------------

    @abc.abstractmethod
    def summarise(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        """Compact payload of a block of events (numpy arrays, sums)."""

    @abc.abstractmethod
    def fit_reference(self, st: ModelState, blocks: list[Block]) -> Any:
        """The model's reference (and thresholds) from its reference blocks."""

    @abc.abstractmethod
    def evaluate(
        self, st: ModelState, blocks: list[Block], event: InferenceEvent, source: Source
    ) -> Finding | None:
        """A finding when the window of ``blocks`` differs from the reference, else None."""

    def finding(
        self,
        st: ModelState,
        *,
        kind: str,
        severity: Severity,
        summary: str,
        evidence: dict[str, Any],
        atlas: Sequence[str],
        event: InferenceEvent,
        source: Source,
    ) -> Finding:
        """A model finding; id keyed by model and window end, sources trigger then window start."""
        window_start = st.window_sources[0] if st.window_sources else source
        sources = [source] if window_start == source else [source, window_start]
        base = {
            "model_version": st.version,
            "window_events": self.window,
            "window_step": self.step,
            "sample_every": self.sample_every,
            "reference_events": self.reference_size,
            "ert_events": st.params.get("ert", self.ert),
            "events_seen": st.seen,
        }
        return Finding.build(
            detector=self.name,
            kind=kind,
            severity=severity,
            entity=Entity("model", st.model_id),
            model_id=st.model_id,
            summary=summary,
            evidence=plain({**base, **evidence}),
            atlas=atlas,
            event_ts=event.ts,  # type: ignore[arg-type]
            sources=sources,
            id_key=f"{st.key}:{st.seen}",
        )

    def stats(self) -> dict[str, float]:
        judged = sum(1 for _, st in self.table.items() if st.ref is not None)
        incidents = sum(1 for _, st in self.table.items() if st.incident)
        return {
            "entities": len(self.table),
            "evicted_total": self.table.evicted,
            "models_with_reference": judged,
            "open_incidents": incidents,
            "reference_fit_failures": self.fit_failures,
        }
