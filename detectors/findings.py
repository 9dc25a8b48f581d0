"""Findings: what a detector says, in the wire contract's format.

A finding's id is stable: the same detector, entity and triggering evidence
always give the same id, so a redelivered batch re-emits findings that chat and
the playbook engine recognise as already seen.

>>> f = Finding.build(detector="rate.principal", kind="denial_of_service",
...     severity="high", entity=Entity("principal", "mallory"), model_id="m",
...     summary="x", evidence={"rate": 3}, atlas=["AML.T0029"],
...     event_ts=0.0, sources=[Source("ml.inference", 0, 41)])
>>> f.ts, f.finding_id == Finding.build(detector="rate.principal",
...     kind="denial_of_service", severity="high", entity=Entity("principal", "mallory"),
...     model_id="m", summary="other words", evidence={}, atlas=[], event_ts=0.0,
...     sources=[Source("ml.inference", 0, 41)]).finding_id
('1970-01-01T00:00:00.000Z', True)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, NamedTuple, TypeAlias

import msgspec

__all__ = [
    "KINDS",
    "SEVERITIES",
    "Entity",
    "EntityType",
    "Finding",
    "Incident",
    "Severity",
    "Source",
    "severity_at_least",
]

Severity: TypeAlias = Literal["info", "low", "medium", "high", "critical"]
EntityType: TypeAlias = Literal["model", "principal", "resource", "ip"]

SEVERITIES: Final[tuple[str, ...]] = ("info", "low", "medium", "high", "critical")
_RANK: Final = {name: i for i, name in enumerate(SEVERITIES)}

KINDS: Final[frozenset[str]] = frozenset(
    {
        "drift",
        "confidence_drop",
        "performance_drop",
        "model_extraction",
        "adversarial_probing",
        "exfiltration",
        "suspicious_access",
        "data_poisoning",
        "denial_of_service",
        "input_integrity",
        "model_tampering",
    }
)


def severity_at_least(severity: str, minimum: str) -> bool:
    """True when ``severity`` ranks at or above ``minimum``."""
    return _RANK[severity] >= _RANK[minimum]


class Source(NamedTuple):
    """Where an event came from: a Kafka position, or a file and line for replay.

    ``item`` names the event inside a message that holds several (a KServe
    batch's instance, a CloudTrail file's record); None for one event per
    message, so that such a source, and the finding ids built on it, stay
    what they were before formats could hold several events.
    """

    topic: str
    partition: int
    offset: int
    item: int | None = None


class SourceRef(msgspec.Struct, omit_defaults=True):
    topic: str
    partition: int
    offset: int
    item: int | None = None


class Entity(msgspec.Struct):
    type: EntityType
    id: str


#: Event times a finding can state: years 1 to 9999 (what RFC 3339 and datetime hold).
_TS_MIN: Final = _dt.datetime(1, 1, 1, tzinfo=_dt.UTC).timestamp()
_TS_MAX: Final = _dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_dt.UTC).timestamp()


def rfc3339(seconds: float, *, millis: bool = True) -> str:
    """RFC 3339 UTC time (to the millisecond, or to the second), clamped to years
    1..9999 (NaN reads as the epoch). The one formatter of times for findings,
    incidents, audit records and action payloads.

    The event's sender chooses its time; a finding about it must still be built.

    >>> rfc3339(1e300), rfc3339(-1e300), rfc3339(float("nan"))
    ('9999-12-31T23:59:59.000Z', '0001-01-01T00:00:00.000Z', '1970-01-01T00:00:00.000Z')
    >>> rfc3339(0.0, millis=False)
    '1970-01-01T00:00:00Z'
    """
    if not math.isfinite(seconds):
        seconds = 0.0 if math.isnan(seconds) else seconds
    seconds = min(max(seconds, _TS_MIN), _TS_MAX)
    moment = _dt.datetime.fromtimestamp(seconds, tz=_dt.UTC)
    text = f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S")
    return text + (f".{moment.microsecond // 1000:03d}Z" if millis else "Z")


def jsonable(value: Any) -> Any:
    """Evidence made safe to encode: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(value, float):  # np.float64 too: make it a plain float
        return float(value) if math.isfinite(value) else None
    if value is None or type(value) in (bool, int, str):
        return value
    if isinstance(value, bool | int | str):  # subclasses (IntEnum, StrEnum ...)
        return bool(value) if isinstance(value, bool) else \
            int(value) if isinstance(value, int) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return jsonable(tolist())
    return str(value)


class Incident(msgspec.Struct, kw_only=True):
    """Where a finding stands in its (detector, entity) incident (optional field).

    ``id``: the incident's first finding's id; ``seq``: 1 for the finding that
    opened it, higher for the updates that went out; ``count``: findings of the
    incident so far (emitted or absorbed); ``escalated``: this update raised
    ``max_severity``. See :mod:`detectors.incidents`.
    """

    id: str
    seq: int
    first_ts: str
    last_ts: str
    count: int
    max_severity: Severity
    escalated: bool = False


class Finding(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One detection, as written to the findings topic.

    ``incident`` is optional (added by the pipeline's incident layer; absent,
    it is not written at all).
    """

    finding_id: str
    ts: str
    detector: str
    kind: str
    severity: Severity
    entity: Entity
    model_id: str | None
    summary: str
    evidence: dict[str, Any]
    atlas: list[str]
    sources: list[SourceRef]
    incident: Incident | None = None

    @property
    def is_update(self) -> bool:
        """True for a repeat of an open incident (not a new finding)."""
        return self.incident is not None and self.incident.seq > 1

    @classmethod
    def build(
        cls,
        *,
        detector: str,
        kind: str,
        severity: Severity,
        entity: Entity,
        model_id: str | None,
        summary: str,
        evidence: Mapping[str, Any],
        atlas: Sequence[str],
        event_ts: float,
        sources: Sequence[Source],
        id_key: str | None = None,
    ) -> Finding:
        """Make a finding; its id hashes detector, kind, entity, model and evidence key.

        ``id_key`` defaults to the triggering (first) source position; give one
        when a detection is better identified otherwise (e.g. a window id).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown finding kind {kind!r}")
        if not sources:
            raise ValueError("a finding needs at least its triggering source")
        trigger = sources[0]
        key = (id_key if id_key is not None
               else f"{trigger.topic}:{trigger.partition}:{trigger.offset}" + (
                   f"#{trigger.item}" if trigger.item is not None else ""))
        digest = hashlib.sha256(
            "\x1f".join((detector, kind, entity.type, entity.id, model_id or "", key)).encode()
        ).hexdigest()[:32]
        return cls(
            finding_id=digest,
            ts=rfc3339(event_ts),
            detector=detector,
            kind=kind,
            severity=severity,
            entity=entity,
            model_id=model_id,
            summary=summary,
            evidence=jsonable(evidence),
            atlas=list(atlas),
            sources=[SourceRef(s.topic, s.partition, s.offset, s.item) for s in sources],
        )


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Finding)


def encode_finding(finding: Finding) -> bytes:
    return _ENCODER.encode(finding)


def decode_finding(raw: bytes) -> Finding:
    return _DECODER.decode(raw)
