"""``kserve``: the KServe inference logger's CloudEvents, as a Knative Kafka broker stores them.

The logger posts each request and each response as a CloudEvent in binary
mode: the body is the payload, the attributes are headers (``ce-`` over HTTP,
``ce_`` in Kafka records; both are read). ``ce-type`` is
``org.kubeflow.serving.inference.request`` or ``.response``, ``ce-id`` is
shared by a request and its response, and the extensions
``inferenceservicename``, ``namespace``, ``component``, ``endpoint`` and
``metadata`` (a JSON object of the request headers listed in the logger's
``metadataHeaders``, where the caller's identity is) say where it came from.
Structured-mode events (``specversion`` in a JSON body) are read too. Other
CloudEvent types on the same broker topic are skipped (counted in ``skipped``).

Bodies are v1 (``instances`` / ``predictions``) or v2 (``inputs`` /
``outputs`` tensors). Request and response are joined by ``ce-id`` in a
:class:`~daemon.formats.join.RequestResponseJoin`; a batch of N instances
becomes N inference events.

>>> fmt = KServeFormat(KServeOptions())
>>> h = [("ce_id", b"r1"), ("ce_type", b"org.kubeflow.serving.inference.request"),
...      ("ce_time", b"2026-01-01T00:00:00Z"), ("ce_inferenceservicename", b"iris"),
...      ("ce_namespace", b"prod"), ("ce_metadata", b'{"X-User": ["ann"]}')]
>>> fmt.decode(b'{"instances": [[1, 2], [3, 4]]}', h, None)
[]
>>> h2 = [("ce_id", b"r1"), ("ce_type", b"org.kubeflow.serving.inference.response"),
...       ("ce_time", b"2026-01-01T00:00:00.050Z")]
>>> [(r.item, r.event.model_id, r.event.principal, r.event.prediction)
...  for r in fmt.decode(b'{"predictions": [0, 2]}', h2, None)]
[(0, 'prod/iris', 'ann', 0), (1, 'prod/iris', 'ann', 2)]
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from pydantic import Field, field_validator

from detectors.events import BadEvent

from .base import (
    MAX_STR,
    DeadLetter,
    Headers,
    Result,
    as_str,
    guarded,
    header,
    load_json,
    rfc3339_seconds,
)
from .join import JoiningFormat, JoinOptions, Side
from .tensors import pair_events, v1_answers, v1_rows, v2_answers, v2_rows

__all__ = ["KServeFormat", "KServeOptions", "caller_from", "check_template", "model_id_from"]

REQUEST_TYPE: Final = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE: Final = "org.kubeflow.serving.inference.response"
_TEMPLATE_FIELDS: Final = frozenset({"name", "namespace", "component", "endpoint"})


class KServeOptions(JoinOptions):
    """Where the caller is, how a model is named, and the join's bounds."""

    principal_headers: list[str] = Field(
        default_factory=lambda: ["x-user", "x-forwarded-user", "x-remote-user", "x-api-key-id"],
        description="request headers (as logged in `metadata`) naming the caller, first found wins",
    )
    source_ip_headers: list[str] = Field(
        default_factory=lambda: ["x-forwarded-for", "x-real-ip"],
        description="request headers holding the caller's address (first of a list)",
    )
    default_principal: str | None = Field(
        "anonymous", description="principal when no header names one; null: dead-letter"
    )
    model_id_template: str = Field(
        "{namespace}/{name}", description="fields: name, namespace, component, endpoint"
    )
    prediction_output: str | None = None
    probabilities_output: str | None = None

    _template = field_validator("model_id_template")(lambda value: check_template(value))


def check_template(value: str) -> str:
    """A model id template naming only known fields (ValueError otherwise)."""
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        raise ValueError(f"model_id_template is malformed: {exc}") from None
    unknown = used - _TEMPLATE_FIELDS
    if unknown or "" in used:
        raise ValueError(
            f"model_id_template may use {sorted(_TEMPLATE_FIELDS)}, not {sorted(unknown)}"
        )
    return value


def model_id_from(template: str, fields: Mapping[str, str | None]) -> str:
    """The model id a template gives; missing fields are empty."""
    return template.format(**{k: fields.get(k) or "" for k in _TEMPLATE_FIELDS})[:MAX_STR]


def caller_from(
    metadata: Mapping[str, Any], names: list[str], first_of_list: bool = False
) -> str | None:
    """The first of ``names`` present in a logged-headers object (case-insensitive).

    Header values are lists of strings (Go's ``http.Header``) or plain strings.
    """
    lowered = {str(k).lower(): v for k, v in list(metadata.items())[:256]}
    for name in names:
        value = lowered.get(name.lower())
        if isinstance(value, list):
            value = value[0] if value else None
        text = as_str(value)
        if text is not None:
            text = text.split(",")[0].strip() if first_of_list else text.strip()
            if text:
                return text
    return None


def _is_v2(items: Any) -> bool:
    return isinstance(items, list) and bool(items) and isinstance(items[0], dict)


class KServeFormat(JoiningFormat):
    """KServe logger CloudEvents joined into inference events."""

    name: ClassVar[str] = "kserve"

    def __init__(self, options: KServeOptions | None = None) -> None:
        self.options = options or KServeOptions()
        super().__init__(self.options)
        self.counters["skipped"] = 0

    def decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        return guarded(self.name, self._decode, value, headers, timestamp_ms, self.options)

    def _attributes(self, value: bytes, headers: Headers) -> tuple[dict[str, Any], Any]:
        """CloudEvent attributes and data, from binary (headers) or structured mode."""
        ce_type = header(headers, "ce_type", "ce-type")
        if ce_type is not None:
            names = ("id", "type", "source", "time", "inferenceservicename", "namespace",
                     "component", "endpoint", "metadata")
            attrs = {n: header(headers, f"ce_{n}", f"ce-{n}") for n in names}
            return attrs, None
        body = load_json(value)
        if isinstance(body, dict) and "specversion" in body:
            attrs = {k: body.get(k) for k in ("id", "type", "source", "time",
                                              "inferenceservicename", "namespace",
                                              "component", "endpoint", "metadata")}
            return attrs, body.get("data")
        raise BadEvent("missing_field", "no ce_type header and not a structured CloudEvent")

    def _decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        attrs, data = self._attributes(value, headers)
        ce_type = as_str(attrs.get("type"))
        if ce_type == REQUEST_TYPE:
            side: Side = "request"
        elif ce_type == RESPONSE_TYPE:
            side = "response"
        else:
            self.counters["skipped"] += 1  # another event type on a shared broker topic
            return []
        ce_id = as_str(attrs.get("id"))
        if ce_id is None:
            raise BadEvent("missing_field", "ce-id is required to join request and response")
        ts = rfc3339_seconds(attrs.get("time"))
        if ts is None and timestamp_ms is not None:
            ts = timestamp_ms / 1000.0
        if ts is None:
            raise BadEvent("missing_field", "no ce-time and no message timestamp")
        body = data if data is not None else load_json(value)
        opts = self.options
        entry: dict[str, Any]
        if side == "request":
            items = body.get("inputs") if isinstance(body, dict) else None
            rows = (v2_rows(items, opts.max_items) if _is_v2(items)
                    else v1_rows(body, opts.max_items))
            entry = {"rows": rows, "ts": ts, "ctx": self._context(attrs)}
        else:
            items = body.get("outputs") if isinstance(body, dict) else None
            answers = (
                v2_answers(items, opts.max_items, opts.prediction_output, opts.probabilities_output)
                if _is_v2(items) else v1_answers(body, opts.max_items)
            )
            version = as_str(body.get("model_version")) if isinstance(body, dict) else None
            entry = {
                "answers": [[a.prediction, a.probabilities] for a in answers],
                "ts": ts,
                "ctx": {"model_version": version, "attributes": {}},
            }
        now = timestamp_ms / 1000.0 if timestamp_ms is not None else ts
        other = self.join.offer(ce_id, side, entry, now, len(value))
        if other is None:
            return []
        request, response = (entry, other) if side == "request" else (other, entry)
        if request["ctx"]["principal"] is None:
            return [DeadLetter(self.name, "missing_principal",
                               "no principal header in the logged metadata")]
        return list(pair_events(ce_id, request, response))

    def _context(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        opts = self.options
        metadata = attrs.get("metadata")
        if isinstance(metadata, str):
            try:
                metadata = load_json(metadata.encode())
            except BadEvent:
                metadata = None
        if not isinstance(metadata, dict):
            metadata = {}
        principal = caller_from(metadata, opts.principal_headers) or opts.default_principal
        source_ip = caller_from(metadata, opts.source_ip_headers, first_of_list=True)
        fields = {
            "name": as_str(attrs.get("inferenceservicename")),
            "namespace": as_str(attrs.get("namespace")),
            "component": as_str(attrs.get("component")),
            "endpoint": as_str(attrs.get("endpoint")),
        }
        extras = {
            "inferenceservice": fields["name"], "namespace": fields["namespace"],
            "component": fields["component"], "endpoint": fields["endpoint"],
            "ce_source": as_str(attrs.get("source")),
        }
        return {
            "model_id": model_id_from(opts.model_id_template, fields),
            "principal": principal,
            "source_ip": source_ip,
            "attributes": {k: v for k, v in extras.items() if v is not None},
        }
