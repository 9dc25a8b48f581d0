"""A reference read from a file: inference events of a JSON Lines file, by model.

``reference_path`` of the telemetry detectors names such a file; it is read
once at construction, and each model's first ``reference_size`` events in it
are that model's reference (see :mod:`detectors.telemetry.window`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from detectors.events import BadEvent, InferenceEvent, decode_event

__all__ = ["MIN_FILE_REFERENCE", "load_reference_file", "model_key"]

#: A reference file model needs at least this many events.
MIN_FILE_REFERENCE: Final = 100


def model_key(model_id: str, version: str | None) -> str:
    """The key of a model version: ``model_id@version``, or ``model_id`` without one."""
    return f"{model_id}@{version}" if version is not None else model_id


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
