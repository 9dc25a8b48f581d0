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
import math
import operator
import zlib
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np

from detectors.base import Detector, EventErrorSink
from detectors.events import BadEvent, Event, InferenceEvent, decode_event
from detectors.findings import Entity, Finding, Severity, Source
from detectors.limits import FEATURE_LIMIT, clip_features
from detectors.state import EntityTable
from detectors.state_codec import state_type

__all__ = [
    "FEATURE_LIMIT",
    "Block",
    "FeatureSchema",
    "ModelState",
    "WindowedModelDetector",
    "attribute",
    "model_key",
]

#: ATLAS ids when a change comes from one caller's traffic (evasion, crafted input).
ATLAS_EVASION: Final = ["AML.T0015", "AML.T0043"]
#: A reference file model needs at least this many events.
MIN_FILE_REFERENCE: Final = 100
#: Share of a model's first block of events a feature must appear in to be in its schema.
MIN_FEATURE_PRESENCE: Final = 0.05


def plain(value: Any) -> Any:
    """Evidence with numpy scalars made Python numbers (``round`` keeps numpy types).

    >>> type(plain({"x": [np.float64(0.5)]})["x"][0])
    <class 'float'>
    """
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def model_key(model_id: str, version: str | None) -> str:
    return f"{model_id}@{version}" if version is not None else model_id


@state_type("telemetry.block")
class Block:
    """Summary of ``step`` consecutive events of one model (detector-specific payload)."""

    __slots__ = ("data", "n", "principals")

    def __init__(self, n: int, principals: list[str], data: Any) -> None:
        self.n = n
        self.principals = principals
        self.data = data


@state_type("telemetry.model_state")
class ModelState:
    """Everything a detector keeps about one model version."""

    __slots__ = (
        "blocks",
        "calm",
        "evaluations",
        "extra",
        "first_source",
        "incident",
        "items",
        "key",
        "model_id",
        "params",
        "ref",
        "ref_blocks",
        "seen",
        "version",
        "window_sources",
    )

    def __init__(self, model_id: str, version: str | None, params: dict[str, float]) -> None:
        self.model_id = model_id
        self.version = version
        self.key = model_key(model_id, version)
        self.params = params
        self.items: list[InferenceEvent] = []
        self.first_source: Source | None = None
        self.window_sources: deque[Source] = deque()
        self.ref_blocks: list[Block] = []
        self.ref: Any = None
        self.blocks: deque[Block] = deque()
        self.seen = 0
        self.evaluations = 0
        self.incident = False
        self.calm = 0
        self.extra: Any = None


@state_type("telemetry.feature_schema")
class FeatureSchema:
    """Feature names of a model and how to turn events' features into arrays.

    List features are positional and named ``f0..fn``; dict features by key.
    A feature whose reference values are mostly strings is *categorical*; the
    others are numeric, and a string met in a numeric feature counts as missing
    (``type_errors``). Numeric values beyond ``FEATURE_LIMIT`` in magnitude
    (infinities too) are clipped to it before any statistic sees them
    (``out_of_range``). ``None`` or an absent key is missing. At most
    ``max_features`` names are kept, the most frequent in the reference, and
    only those present in at least ``MIN_FEATURE_PRESENCE`` of its rows. The
    schema is learnt from a model's first block of events; features that first
    appear later are ignored (a model whose inputs change shape is a new version).

    >>> s = FeatureSchema.learn([[1.0, 2.0], {"f0": 3.0, "f1": None, "city": "x"}])
    >>> s.numeric, s.categorical
    (('f0', 'f1'), ('city',))
    >>> s.numeric_matrix([[1.0, 2.0], {"f0": 3.0, "f1": "oops"}]).tolist()
    [[1.0, 2.0], [3.0, nan]]
    >>> s.numeric_matrix([[1e308, -float("inf")]]).tolist(), s.out_of_range
    ([[10000000000000.0, -10000000000000.0]], 2)
    """

    #: Class default, so that schemas pickled before the counter existed load.
    out_of_range = 0

    def __init__(self, numeric: Sequence[str], categorical: Sequence[str]) -> None:
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        positions = [
            int(name[1:]) if name[:1] == "f" and name[1:].isdigit() else -1 for name in self.numeric
        ]
        self._positions = positions
        # List rows can be sliced when the numeric names are exactly f0..f{k-1}.
        self._prefix = positions == list(range(len(self.numeric)))
        self.type_errors = 0
        self.out_of_range = 0

    @classmethod
    def learn(cls, rows: Sequence[Any], max_features: int = 256) -> FeatureSchema:
        seen: Counter[str] = Counter()
        strings: Counter[str] = Counter()
        present: Counter[str] = Counter()
        lengths: Counter[int] = Counter()  # of list rows
        order: dict[str, int] = {}
        for row in rows:
            if isinstance(row, dict):
                present.update(row.keys())
                for name, value in row.items():
                    order.setdefault(name, len(order))
                    if value is not None:
                        seen[name] += 1
                        if isinstance(value, str):
                            strings[name] += 1
            else:
                # Positions past max_features lose every tie to lower ones: not counted,
                # so a 5000-long list costs no more than a short one.
                lengths[min(len(row), max_features)] += 1
        longer = sum(lengths.values())  # list rows with more than i values
        for i in range(max(lengths, default=0)):
            longer -= lengths.get(i, 0)
            name = f"f{i}"
            order.setdefault(name, len(order))
            seen[name] += longer
            present[name] += longer
        # One caller's odd row must not widen the schema (a row of 3000 keys made
        # every reference fit cost seconds): a feature is in rows enough.
        least = max(1, math.ceil(MIN_FEATURE_PRESENCE * len(rows)))
        common = [n for n in order if present[n] >= least]
        kept = sorted(common, key=lambda n: (-seen[n], order[n]))[:max_features]
        kept.sort(key=order.__getitem__)
        numeric = [n for n in kept if strings[n] * 2 <= seen[n]]
        categorical = [n for n in kept if strings[n] * 2 > seen[n]]
        return cls(numeric, categorical)

    def numeric_matrix(self, rows: Sequence[Any]) -> np.ndarray:
        """(rows, numeric features) float array; NaN where missing or not a number."""
        names, k = self.numeric, len(self.numeric)
        if not rows or not k:
            return np.empty((len(rows), k))
        # One flat list then np.fromiter: about half the cost of nested lists.
        flat: list[Any] = []
        extend = flat.extend
        pick = operator.itemgetter(*names)
        positions = self._positions
        for row in rows:
            if type(row) is dict:
                try:
                    got = pick(row)
                except KeyError:
                    extend(map(row.get, names))
                    continue
                if k == 1:
                    flat.append(got)
                else:
                    extend(got)
            elif self._prefix and len(row) >= k:
                extend(row if len(row) == k else row[:k])
            else:
                n = len(row)
                extend([row[p] if 0 <= p < n else None for p in positions])
        try:
            matrix = np.fromiter(flat, float, len(flat)).reshape(len(rows), k)
        except (TypeError, ValueError):
            matrix = self._slow_matrix(flat, len(rows), k)
        return self._bounded(matrix)

    def _slow_matrix(self, flat: list[Any], n: int, k: int) -> np.ndarray:
        try:
            return np.array(flat, dtype=float).reshape(n, k)
        except (TypeError, ValueError):
            clean: list[float | None] = []
            for v in flat:
                if isinstance(v, int | float) and not isinstance(v, bool):
                    clean.append(v)
                else:
                    if v is not None:
                        self.type_errors += 1
                    clean.append(None)
            return np.array(clean, dtype=float).reshape(n, k)

    def _bounded(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix`` with values beyond +-FEATURE_LIMIT (and infinities) clipped to it."""
        self.out_of_range += clip_features(matrix)
        return matrix

    def categorical_columns(self, rows: Sequence[Any]) -> list[list[Any]]:
        """Raw values of each categorical feature (None where absent or a list row)."""
        return [
            [row.get(name) if type(row) is dict else None for row in rows]
            for name in self.categorical
        ]


def attribute(
    principals: Sequence[str],
    score: Callable[[np.ndarray], float],
    *,
    top: int = 5,
    min_rows: int = 20,
    rank_by: np.ndarray | None = None,
) -> dict[str, Any]:
    """Which callers' traffic makes a window's ``score`` exceed 1 (the threshold).

    For the ``top`` principals by volume (or by the sum of per-row ``rank_by``
    weights, e.g. outlying rows, so that a small caller sending only odd inputs
    is not hidden by big ones): their share of the window, the score
    of their rows alone and the score of the window without them. The change is
    ``single_principal`` when removing one principal brings the score below 1
    (or one principal sent the whole window), else ``population``.

    >>> who = ["a"] * 50 + ["b"] * 50
    >>> result = attribute(who, lambda m: 2.0 * m[:50].mean() if m.any() else 0.0)
    >>> result["scope"], result["principal"]
    ('single_principal', 'a')
    """
    arr = np.asarray(principals, dtype=object)
    n = len(arr)
    uniq, inverse, counts = np.unique(arr, return_inverse=True, return_counts=True)
    weight = counts if rank_by is None else np.bincount(inverse, weights=rank_by)
    order = np.argsort(-weight, kind="stable")[:top]
    rows: list[dict[str, Any]] = []
    culprit: str | None = None
    for i in order.tolist():
        mask = inverse == i
        alone = score(mask) if counts[i] >= min_rows else None
        rest = n - int(counts[i])
        without = score(~mask) if rest >= min_rows else None
        rows.append(
            {
                "principal": str(uniq[i]),
                "share": round(counts[i] / n, 4),
                "score_alone": None if alone is None else round(alone, 3),
                "score_without": None if without is None else round(without, 3),
            }
        )
        explains = without is not None and without < 1.0 and (alone is None or alone >= 1.0)
        if culprit is None and (explains or (len(uniq) == 1)):
            culprit = str(uniq[i])
    return {
        "scope": "single_principal" if culprit is not None else "population",
        "principal": culprit,
        "principals_in_window": len(uniq),
        "top_principals": rows,
    }


def load_reference_file(path: str, limit: int) -> dict[str, list[InferenceEvent]]:
    """Inference events of a JSON Lines file grouped by model key (first ``limit`` each).

    Raises ValueError naming the file and line on any problem.
    """
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"reference_path {path!r}: cannot read: {exc.strerror}") from None
    grouped: dict[str, list[InferenceEvent]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = decode_event(line, "inference")
        except BadEvent as exc:
            raise ValueError(f"reference_path {path!r} line {lineno}: {exc}") from None
        assert isinstance(event, InferenceEvent)
        events = grouped.setdefault(model_key(event.model_id, event.model_version), [])
        if len(events) < limit:
            events.append(event)
    if not grouped:
        raise ValueError(f"reference_path {path!r}: no inference events")
    for key, events in grouped.items():
        if len(events) < MIN_FILE_REFERENCE:
            raise ValueError(
                f"reference_path {path!r}: model {key!r} has {len(events)} events, "
                f"at least {MIN_FILE_REFERENCE} are needed"
            )
    return grouped


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
        if step < 1 or window < step or window % step:
            raise ValueError("step must be >= 1 and window a multiple of step")
        if reference_size < 2 * step:
            raise ValueError("reference_size must be at least 2 * step")
        if sample_every < 1 or sample_every > step:
            raise ValueError("sample_every must be between 1 and step")
        if ert <= step:
            raise ValueError("ert (expected events between false alarms) must exceed step")
        self.reference_size = reference_size
        self.window = window
        self.sample_every = sample_every
        #: Events a full window holds after sampling: what thresholds are computed for.
        self.window_rows = window // sample_every
        self.step = step
        self.ert = ert
        self.seed = seed
        self.overrides = {m: dict(p) for m, p in (overrides or {}).items()}
        for model, params in self.overrides.items():
            unknown = set(params) - set(self.overridable)
            if unknown:
                raise ValueError(
                    f"overrides[{model!r}]: unknown {sorted(unknown)}; allowed: {self.overridable}"
                )
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
        if type(event) is not InferenceEvent:
            return None
        # Hot path: a plain dict lookup; the LRU table is touched once per block.
        st = self._hot.get(event.model_id)
        if st is None or st.version != event.model_version:
            st = self._state_of(event)
        if self.needs_confidence and event.confidence is None:
            return None
        items = st.items
        if not items:
            st.first_source = source
        items.append(event)
        if len(items) < self.step:
            return None
        return self._close_block(st, event, source)

    def process_batch(
        self, items: Sequence[tuple[Event, Source]], on_error: EventErrorSink | None = None
    ) -> list[Finding]:
        """:meth:`process` over a run of events, without a method call per event."""
        out: list[Finding] = []
        hot = self._hot
        step = self.step
        needs_confidence = self.needs_confidence
        for event, source in items:
            if type(event) is not InferenceEvent:
                continue
            st = hot.get(event.model_id)
            if st is None or st.version != event.model_version:
                st = self._state_of(event)
                hot = self._hot  # rebuilt when a model was evicted
            if needs_confidence and event.confidence is None:
                continue
            buffered = st.items
            if not buffered:
                st.first_source = source
            buffered.append(event)
            if len(buffered) >= step:
                try:
                    found = self._close_block(st, event, source)
                except Exception as exc:
                    if on_error is None:
                        raise
                    on_error(event, exc)
                    continue
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
            st.ref_blocks.append(block)
            if st.seen >= self.reference_size:
                blocks, st.ref_blocks = st.ref_blocks, []
                try:
                    st.ref = self.fit_reference(st, blocks)
                except Exception:
                    # The model's state is left as before its reference began, so
                    # the next fit learns from new events, never these rows again.
                    st.seen, st.extra = 0, None
                    self.fit_failures += 1
                    raise
            return None
        k = self.window // self.step
        st.blocks.append(block)
        st.window_sources.append(st.first_source or source)
        if len(st.blocks) > k:
            st.blocks.popleft()
            st.window_sources.popleft()
        if len(st.blocks) < k:
            return None
        st.evaluations += 1
        finding = self.evaluate(st, list(st.blocks), event, source)
        if finding is None:
            if st.incident:
                st.calm += 1
                if st.calm >= k:
                    st.incident = False
            return None
        st.calm = 0
        if st.incident:
            return None
        st.incident = True
        return [finding]

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


def scope_phrase(attribution: dict[str, Any]) -> str:
    """Words for a summary: who the change comes from."""
    if attribution["scope"] == "single_principal":
        return f"concentrated on caller {attribution['principal']}"
    return "across the caller population"
