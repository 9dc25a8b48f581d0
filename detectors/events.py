"""Typed input events of the wire contract (shared/contract/README.md).

Decoding is one pass of msgspec: JSON parsing and type validation together,
which measured about ten times faster than orjson plus per-field Python checks
(see ``mlwatchd bench --decode``). Every problem, whatever raised it, becomes
a :class:`BadEvent` with a one-line reason, ready for the dead-letter topic.

Whoever writes the input topics may be the attacker being watched, so the
types bound what an event can carry: integers fit in 64 bits, ``attributes``
nest at most :data:`MAX_ATTRIBUTE_DEPTH` levels, ``ts`` lies between
:data:`TS_MIN` and :data:`TS_MAX` (the daemon adds a window around now:
:func:`check_ts_window`).

>>> ev = decode_event(b'{"ts": 1700000000000, "model_id": "m", "request_id": "r1",'
...                   b' "principal": "alice", "features": [1, 2], "prediction": 1,'
...                   b' "probabilities": [0.2, 0.8]}', "inference")
>>> ev.ts, ev.confidence
(1700000000.0, 0.8)
>>> decode_event(b'{"ts": 1}', "audit")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
detectors.events.BadEvent: missing_field: Object missing required field `actor`
>>> try:
...     decode_event(b'{"ts": "9999-12-31T23:59:59Z", "actor": "a", "action": "x",'
...                  b' "resource": "r", "outcome": "success"}', "audit")
... except BadEvent as exc:
...     print(exc.reason)
ts_out_of_range
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec

__all__ = [
    "EVENT_TYPES",
    "MAX_ATTRIBUTE_DEPTH",
    "TS_MAX",
    "TS_MIN",
    "AccessEvent",
    "AuditEvent",
    "BadEvent",
    "Event",
    "InferenceEvent",
    "check_ts_window",
    "decode_any",
    "decode_event",
    "event_decoder",
    "event_type_of",
    "parse_ts",
]

#: Timestamps above this are milliseconds since the epoch (contract).
_MS_THRESHOLD: Final = 1e11
#: Hard bounds on ``ts`` (seconds), whatever the configuration: 1970-01-01 and
#: 2100-01-01 UTC. Anything outside is no event time of a running system, and
#: every date computation on what lies inside stays in range.
TS_MIN: Final = 0.0
TS_MAX: Final = 4_102_444_800.0
#: An RFC 3339 time is at most 35 characters; a longer string is not one.
_TS_MAX_CHARS: Final = 64
#: How deep ``attributes`` may nest (objects and arrays); deeper is ``too_deep``.
MAX_ATTRIBUTE_DEPTH: Final = 16

#: Integers are 64-bit: a 400-digit number is no count, label or time, and
#: would overflow float conversions (and str() past 4,300 digits) downstream.
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Outcome: TypeAlias = Literal["success", "failure", "denied"]
Scalar: TypeAlias = str | Int64 | float
Time: TypeAlias = str | int | float
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


def _bounded_json(depth: int) -> Any:
    """The type of a JSON value with at most ``depth`` levels of objects/arrays, for msgspec.

    msgspec checks it in C as it parses, so a deeper value is refused at the
    first level too many, before any recursion limit is near.
    """
    leaf: Any = str | Int64 | float | bool | None
    value: Any = leaf
    for _ in range(depth):
        value = leaf | list[value] | dict[str, value]
    return value


_AttributeValue: TypeAlias = _bounded_json(MAX_ATTRIBUTE_DEPTH - 1)  # type: ignore[valid-type]


class BadEvent(ValueError):
    """A message that cannot be an event; ``reason`` is a short machine word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_ts(value: Time) -> float:
    """Seconds since the epoch from an RFC 3339 string, seconds or milliseconds.

    >>> parse_ts("2026-01-01T00:00:00Z"), parse_ts(1767225600000), parse_ts(1767225600)
    (1767225600.0, 1767225600.0, 1767225600.0)
    """
    if isinstance(value, str):
        if len(value) > _TS_MAX_CHARS:
            raise ValueError(f"ts is not an RFC 3339 time: {len(value)} characters")
        try:
            parsed = _dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"ts is not an RFC 3339 time: {value[:40]!r}") from None
        if parsed.tzinfo is None:
            raise ValueError("ts has no time zone offset (RFC 3339 requires one)")
        try:
            seconds = parsed.timestamp()
        except (OverflowError, ValueError):  # year 1 with a positive offset, and the like
            raise ValueError(f"{_OUT_OF_RANGE}: {value[:40]!r}") from None
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an integer too large for a float
            raise ValueError(f"{_OUT_OF_RANGE}: a number of {len(str(value))} digits") \
                from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("ts must be a finite, non-negative number")
        if seconds > _MS_THRESHOLD:
            seconds /= 1000.0
    if not TS_MIN <= seconds < TS_MAX:
        raise ValueError(f"{_OUT_OF_RANGE}: {seconds:.6g} s is outside 1970..2100")
    return seconds


_OUT_OF_RANGE: Final = "ts out of range"


def check_ts_window(
    ts: float, now: float, max_future_skew_s: float | None, max_age_s: float | None
) -> None:
    """Raise ``BadEvent("ts_out_of_range")`` if ``ts`` is too far ahead of or behind ``now``.

    Detectors keep event-time clocks (buckets, warm-up, evictions): one event
    from next year would close every window at once; one from long ago would
    count into a baseline that no longer exists. None switches a bound off.

    >>> check_ts_window(1000.0, now=900.0, max_future_skew_s=60, max_age_s=None)
    Traceback (most recent call last):
    ...
    detectors.events.BadEvent: ts_out_of_range: ts is 100 s ahead of now (max_future_skew_s 60)
    """
    if max_future_skew_s is not None and ts - now > max_future_skew_s:
        raise BadEvent("ts_out_of_range", f"ts is {ts - now:.0f} s ahead of now "
                                          f"(max_future_skew_s {max_future_skew_s:g})")
    if max_age_s is not None and now - ts > max_age_s:
        raise BadEvent("ts_out_of_range", f"ts is {now - ts:.0f} s before now "
                                          f"(max_age_s {max_age_s:g})")


class _Base(msgspec.Struct, kw_only=True, tag_field="event_type", omit_defaults=True):
    #: Decoded as a string or a float: a JSON integer too large for a float is
    #: refused by msgspec itself; ``__post_init__`` turns it into seconds.
    ts: str | float
    attributes: dict[str, _AttributeValue] | None = None


class InferenceEvent(_Base, tag="inference"):
    """One model answer, as logged by the serving layer."""

    model_id: str
    request_id: str
    principal: str
    features: list[float] | dict[str, float | str | None]
    prediction: Scalar
    model_version: str | None = None
    source_ip: str | None = None
    probabilities: list[float] | dict[str, float] | None = None
    confidence: Unit | None = None
    label: Scalar | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        self.ts = parse_ts(self.ts)
        if self.confidence is None and self.probabilities:
            values = (
                self.probabilities.values()
                if isinstance(self.probabilities, dict)
                else self.probabilities
            )
            top = max(values)
            if 0.0 <= top <= 1.0:
                self.confidence = top

    @property
    def subject(self) -> str:
        """The principal the event is about (the contract's message key)."""
        return self.principal


class AuditEvent(_Base, tag="audit"):
    """Something a principal did to a dataset, model, endpoint, role or secret."""

    actor: str
    action: str
    resource: str
    outcome: Outcome
    resource_type: str | None = None
    bytes: Count | None = None
    records: Count | None = None
    source_ip: str | None = None
    user_agent: str | None = None

    def __post_init__(self) -> None:
        self.ts = parse_ts(self.ts)

    @property
    def subject(self) -> str:
        return self.actor


class Geo(msgspec.Struct, omit_defaults=True):
    country: str | None = None
    city: str | None = None
    lat: Annotated[float, msgspec.Meta(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180.0, le=180.0)] | None = None


class AccessEvent(_Base, tag="access"):
    """An authentication or authorisation event."""

    principal: str
    action: str
    outcome: Outcome
    resource: str | None = None
    source_ip: str | None = None
    geo: Geo | None = None
    auth_method: str | None = None
    user_agent: str | None = None

    def __post_init__(self) -> None:
        self.ts = parse_ts(self.ts)

    @property
    def subject(self) -> str:
        return self.principal


Event: TypeAlias = InferenceEvent | AuditEvent | AccessEvent

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    "inference": InferenceEvent,
    "audit": AuditEvent,
    "access": AccessEvent,
}

_DECODERS: Final = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()}
_ANY_DECODER: Final = msgspec.json.Decoder(Event)


def _reason(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith(_OUT_OF_RANGE) or (text.startswith("Number out of range")
                                          and text.endswith("`$.ts`")):
        return "ts_out_of_range"
    if text.startswith("Object missing required field"):
        return "missing_field"
    if text.startswith("Expected `object`"):
        return "not_an_object"
    if text.startswith("Expected") and "- at `$.attributes" in text and _too_deep(text):
        return "too_deep"
    if text.startswith("Expected"):
        # "Expected `float` <= 1.0" is a constraint on a value of the right type
        head = text.split(" - at ", 1)[0]
        constrained = any(op in head for op in (" <= ", " >= ", " < ", " > ", "length"))
        return "invalid_value" if constrained else "wrong_type"
    return "invalid_value"


def _too_deep(text: str) -> bool:
    """A type error at the deepest level ``attributes`` may have: it nests too deep."""
    path = text.rsplit("- at `$.attributes", 1)[1]
    return path.count("[") >= MAX_ATTRIBUTE_DEPTH - 1 and ("got `object`" in text
                                                           or "got `array`" in text)


def _bad_event(exc: Exception) -> BadEvent:
    """The :class:`BadEvent` for whatever decoding ``raw`` raised."""
    if isinstance(exc, BadEvent):
        return exc
    if isinstance(exc, msgspec.ValidationError):
        return BadEvent(_reason(exc), str(exc))
    if isinstance(exc, msgspec.DecodeError):
        return BadEvent("not_json", str(exc))
    if isinstance(exc, RecursionError):
        # msgspec skips unknown fields recursively: a 1,000-deep unknown field
        return BadEvent("too_deep", "JSON nests deeper than the recursion limit")
    # Nothing else is known to get here; whatever does must cost one message only.
    return BadEvent("undecodable", f"{type(exc).__name__}: {exc}")


def decode_event(raw: bytes, event_type: str, max_bytes: int | None = None) -> Event:
    """Decode and validate ``raw`` as an event of ``event_type``.

    The ``event_type`` field may be absent (implied by the topic); if present
    it must match. Raises :class:`BadEvent` with a reason on any problem, and
    nothing else; ``max_bytes`` refuses larger input unread (``too_large``).
    """
    decoder = _DECODERS[event_type]  # a KeyError here is the caller's bug, not the input's
    try:
        if max_bytes is not None and len(raw) > max_bytes:
            raise BadEvent("too_large", f"{len(raw)} bytes > limit {max_bytes}")
        return decoder.decode(raw)
    except Exception as exc:
        raise _bad_event(exc) from None


def event_decoder(event_type: str) -> Callable[[bytes], Event]:
    """The bare decode of :func:`decode_event` for a hot loop: no size check, and
    exceptions as msgspec raises them (ask :func:`decode_event` for the reason)."""
    return _DECODERS[event_type].decode


def decode_any(raw: bytes, max_bytes: int | None = None) -> Event:
    """Decode an event whose ``event_type`` field names its kind (JSON Lines files).

    Raises :class:`BadEvent` on any problem, as :func:`decode_event`.
    """
    try:
        if max_bytes is not None and len(raw) > max_bytes:
            raise BadEvent("too_large", f"{len(raw)} bytes > limit {max_bytes}")
        return _ANY_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if "missing required field `event_type`" in text:
            raise BadEvent("missing_field", "event_type is required in files") from None
        raise _bad_event(exc) from None
    except Exception as exc:
        raise _bad_event(exc) from None


def event_type_of(event: Event) -> str:
    """The contract name of an event's kind."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]
