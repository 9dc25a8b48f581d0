"""What every input format shares: its result types, its protocol, its bounds.

A format turns one Kafka message (value bytes, headers, broker timestamp) into
zero or more contract events, or dead-letter reasons. It never raises: every
problem, of any kind, becomes a :class:`DeadLetter` (see :func:`guarded`).
Everything a message carries may be chosen by an attacker, so each format is
bounded by :class:`Limits`: the value's size, the JSON nesting depth (the
parser's own recursion limit, caught), and the number of items one message may
expand into.

>>> d = Decoded(event=None, item=3)  # type: ignore[arg-type]
>>> d.item
3
>>> DeadLetter("kserve", "not_json", "bad byte at 0").reason
'not_json'
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias

import msgspec
from pydantic import BaseModel, ConfigDict, Field

from detectors.events import EVENT_TYPES, BadEvent, Event

__all__ = [
    "DeadLetter",
    "Decoded",
    "Format",
    "FormatOptions",
    "Headers",
    "Limits",
    "Result",
    "as_str",
    "guarded",
    "header",
    "load_json",
    "make_event",
    "obj",
    "outcome_of_status",
    "rfc3339_seconds",
    "scalar_attrs",
]

Headers: TypeAlias = Sequence[tuple[str, bytes]]

#: 9999-12-31T23:59:59Z: later times are refused (they overflow RFC 3339 formatting).
MAX_TS: Final = 253402300799.0
#: Longest string copied from a message into an event (ids, names, user agents).
MAX_STR: Final = 1024


@dataclass(frozen=True, slots=True)
class Decoded:
    """One event read from a message; ``item`` is its index inside the message.

    ``item`` is None when the format holds one event per message by nature
    (contract, litellm, one k8s audit Event), so the event's source position
    and the finding ids built on it stay exactly those of today's decoder.
    """

    event: Event
    item: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a message (or one item of it, ``item``) cannot become an event."""

    format: str
    reason: str
    detail: str
    item: int | None = None


Result: TypeAlias = Decoded | DeadLetter


class Limits(BaseModel):
    """Bounds that hold for every format (options of each format too)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(1_048_576, ge=64, description="largest message value read")
    max_items: int = Field(
        10_000, ge=1, description="most events (instances, records) one message expands into"
    )


class FormatOptions(Limits):
    """Base of each format's options (a pydantic model: checked at start-up)."""


class Format(Protocol):
    """A message reader: pure apart from the bounded state it declares."""

    @property
    def name(self) -> str:
        """The format's name in config and dead letters (e.g. ``k8s-audit``)."""
        ...

    def decode(
        self, value: bytes, headers: Headers, timestamp_ms: int | None
    ) -> list[Result]:
        """Events and dead-letter reasons for one message; never raises."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state (empty for a stateless format)."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`snapshot`."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for metrics (e.g. requests whose response never came)."""
        ...


def guarded(
    name: str,
    body: Callable[[bytes, Headers, int | None], list[Result]],
    value: bytes,
    headers: Headers,
    timestamp_ms: int | None,
    limits: Limits,
) -> list[Result]:
    """Run ``body`` under the size cap, turning any exception into a dead letter.

    The catch-all is deliberate: a format must never stop the daemon, whatever
    the bytes; a bug in a format shows as ``internal_error`` dead letters.
    """
    if not value:  # a tombstone (None) or b"": the runtime's reason for it
        return [DeadLetter(name, "empty", "message has no value")]
    if not isinstance(value, bytes | bytearray | memoryview):
        return [DeadLetter(name, "not_bytes", f"value is {type(value).__name__}")]
    if len(value) > limits.max_bytes:
        return [DeadLetter(name, "too_large", f"{len(value)} bytes > {limits.max_bytes}")]
    try:
        return body(bytes(value), headers, timestamp_ms)
    except BadEvent as exc:
        return [DeadLetter(name, exc.reason, exc.detail[:200])]
    except RecursionError:
        return [DeadLetter(name, "too_deep", "JSON nested beyond the parser's limit")]
    except Exception as exc:
        return [DeadLetter(name, "internal_error", f"{type(exc).__name__}: {str(exc)[:160]}")]


def load_json(value: bytes) -> Any:
    """Parse JSON; raises :class:`BadEvent` (``not_json``) or RecursionError."""
    try:
        return msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise BadEvent("not_json", str(exc)) from None


def header(headers: Headers, *names: str) -> str | None:
    """The first header among ``names`` (case-insensitive), decoded, else None."""
    wanted = [n.lower() for n in names]
    found: dict[str, bytes] = {}
    for key, raw in headers or ():
        if isinstance(key, str) and key.lower() in wanted and key.lower() not in found:
            found[key.lower()] = raw if isinstance(raw, bytes) else b""
    for name in wanted:
        if name in found:
            return found[name].decode("utf-8", "replace")[:MAX_STR]
    return None


def as_str(value: Any) -> str | None:
    """A non-empty string (capped at :data:`MAX_STR`), or None for anything else."""
    if isinstance(value, str) and value:
        return value[:MAX_STR]
    return None


def obj(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def scalar_attrs(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """Only scalar, finite, short values: what may be kept from a message's extras."""
    out: dict[str, Any] = {}
    for key, value in pairs.items():
        if isinstance(value, bool) or value is None:
            if value is not None:
                out[key] = value
        elif isinstance(value, int):
            out[key] = value
        elif isinstance(value, float):
            if math.isfinite(value):
                out[key] = value
        elif isinstance(value, str):
            out[key] = value[:MAX_STR]
    return out


def rfc3339_seconds(value: Any) -> float | None:
    """Seconds since the epoch of an RFC 3339 string, else None (never raises)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def outcome_of_status(code: int | None) -> str:
    """``success`` below 400, ``denied`` for 401/403, else ``failure``."""
    if code is None or code < 400:
        return "success"
    return "denied" if code in (401, 403) else "failure"


def make_event(kind: str, fields: Mapping[str, Any]) -> Event:
    """Validate ``fields`` as a contract event of ``kind`` (same rules as the wire).

    Raises :class:`BadEvent` (``invalid_value``) when a field is of the wrong
    type or out of range, e.g. a non-finite feature or a year-9999 time.
    """
    try:
        event = msgspec.convert(dict(fields), EVENT_TYPES[kind])
    except (msgspec.ValidationError, ValueError, OverflowError) as exc:
        raise BadEvent("invalid_value", str(exc)[:200]) from None
    ts = event.ts
    if not isinstance(ts, float) or not 0.0 <= ts <= MAX_TS:
        raise BadEvent("invalid_value", "time is before 1970 or after year 9999")
    if not _finite(msgspec.structs.asdict(event)):
        raise BadEvent("invalid_value", "a number is not finite")
    return event


def _finite(node: Any, depth: int = 0) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if depth > 4:
        return True  # attributes hold scalars only; features are at depth 2
    if isinstance(node, dict):
        return all(_finite(v, depth + 1) for v in node.values())
    if isinstance(node, list):
        return all(_finite(v, depth + 1) for v in node)
    return True
