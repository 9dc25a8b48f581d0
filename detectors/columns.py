"""A polled run of events with what several detectors read of it, computed once.

The pipeline hands every detector of a run the same :class:`Run` (a list of
``(event, source)`` pairs, so a detector that knows nothing of it sees the
list it always saw). What more than one detector needs per event is computed
on first use and kept for the others: the model segments (consecutive
inference events of one model and version) and, per segment, the events that
carry a confidence. A plain list works too: the helpers then compute the
columns for that call only, with the same result (the conformance suite feeds
detectors plain lists and single events).

>>> from detectors.events import InferenceEvent
>>> from detectors.findings import Source
>>> def ev(model, conf=None):
...     return InferenceEvent(ts=1.0, model_id=model, request_id="r", principal="p",
...                           features=[1.0], prediction=0, confidence=conf)
>>> run = Run((ev(m, c), Source("t", 0, i)) for i, (m, c) in
...           enumerate([("a", 0.9), ("a", None), ("b", 0.5), ("a", 0.7)]))
>>> [(s.start, s.end, s.model_id) for s in model_segments(run)]
[(0, 2, 'a'), (2, 3, 'b'), (3, 4, 'a')]
>>> [[src.offset for _, src in c] for c in confident_segments(run)]
[[0], [2], [3]]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from detectors.events import Event, InferenceEvent
from detectors.findings import Source

__all__ = ["Run", "Segment", "confident_segments", "model_segments"]

Item = tuple[Event, Source]


class Segment(NamedTuple):
    """``items[start:end]``: consecutive inference events of one model and version
    (``model_id`` None: consecutive events of another kind)."""

    start: int
    end: int
    model_id: str | None
    model_version: str | None


class Run(list[Item]):
    """A run of ``(event, source)`` pairs of one kind, with its shared columns."""

    __slots__ = ("_confident", "_segments")

    def __init__(self, items: Iterable[Item] = ()) -> None:
        super().__init__(items)
        self._segments: list[Segment] | None = None
        self._confident: list[list[Item]] | None = None


def _segments(items: Sequence[Item]) -> list[Segment]:
    out: list[Segment] = []
    start = 0
    model: str | None = None
    version: str | None = None
    this: str | None
    this_version: str | None
    for i, (event, _) in enumerate(items):
        if type(event) is InferenceEvent:
            this, this_version = event.model_id, event.model_version
        else:
            this = this_version = None
        if i and (this != model or this_version != version or (this is None) != (model is None)):
            out.append(Segment(start, i, model, version))
            start = i
        model, version = this, this_version
    if items:
        out.append(Segment(start, len(items), model, version))
    return out


def model_segments(items: Sequence[Item]) -> list[Segment]:
    """The model segments of ``items``, in order (computed once per :class:`Run`)."""
    if type(items) is Run:
        found = items._segments
        if found is None:
            found = items._segments = _segments(items)
        return found
    return _segments(items)


def confident_segments(items: Sequence[Item]) -> list[list[Item]]:
    """Per model segment, its pairs whose event has a ``confidence`` (once per :class:`Run`)."""
    if type(items) is Run and items._confident is not None:
        return items._confident
    out = [
        [it for it in items[s.start:s.end] if it[0].confidence is not None]  # type: ignore[union-attr]
        if s.model_id is not None else []
        for s in model_segments(items)
    ]
    if type(items) is Run:
        items._confident = out
    return out
