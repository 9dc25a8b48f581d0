"""``oip``: Open Inference Protocol (v2) requests and responses, as JSON.

Two shapes are read:

- a pair in one message, ``{"request": InferRequest, "response": InferResponse}``
  (optionally with ``ts`` and ``principal``), as a logging sidecar or a Triton
  request logger writes it;
- a request and a response as separate messages (Seldon Core 2 writes a model's
  ``inputs`` and ``outputs`` to two topics), joined by the OIP ``id`` (or the
  ``x-request-id`` header) with the same bounded join as ``kserve``.

A request is ``{id, inputs: [{name, shape, datatype, data}], parameters}``; a
response is ``{model_name, model_version, id, outputs: [...]}``. The model id
is the response's ``model_name``; the caller comes from the message headers
named in ``principal_headers``, else the request parameter
``principal_parameter``, else ``default_principal``. Time is the pair's ``ts``,
else the Kafka message timestamp.

>>> fmt = OipFormat(OipOptions())
>>> msg = (b'{"ts": "2026-01-01T00:00:00Z", "request": {"id": "42", "inputs": [{"name": "x",'
...        b' "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "response": {'
...        b'"id": "42", "model_name": "fraud", "model_version": "3", "outputs": [{"name":'
...        b' "label", "shape": [1], "datatype": "INT64", "data": [1]}]}}')
>>> [(r.event.model_id, r.event.model_version, r.event.features, r.event.prediction)
...  for r in fmt.decode(msg, [("x-user", b"svc-scoring")], None)]
[('fraud', '3', [1.0, 2.0, 3.0], 1)]
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from detectors.events import BadEvent, parse_ts

from .base import (
    DeadLetter,
    Headers,
    Result,
    as_str,
    guarded,
    header,
    load_json,
)
from .join import JoiningFormat, JoinOptions
from .tensors import pair_events, v2_answers, v2_rows

__all__ = ["OipFormat", "OipOptions"]


class OipOptions(JoinOptions):
    """Where the caller is, which outputs hold the answer, and the join's bounds."""

    principal_headers: list[str] = Field(
        default_factory=lambda: ["x-user", "x-forwarded-user", "x-remote-user", "x-api-key-id"]
    )
    source_ip_headers: list[str] = Field(default_factory=lambda: ["x-forwarded-for", "x-real-ip"])
    principal_parameter: str | None = Field(
        "principal", description="request `parameters` key naming the caller, if no header does"
    )
    default_principal: str | None = "anonymous"
    prediction_output: str | None = None
    probabilities_output: str | None = None


class OipFormat(JoiningFormat):
    """OIP v2 request/response pairs (one message or two) into inference events."""

    name: ClassVar[str] = "oip"

    def __init__(self, options: OipOptions | None = None) -> None:
        self.options = options or OipOptions()
        super().__init__(self.options)

    def decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        return guarded(self.name, self._decode, value, headers, timestamp_ms, self.options)

    def _decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        body = load_json(value)
        if not isinstance(body, dict):
            raise BadEvent("not_an_object", "an OIP message must be a JSON object")
        ts: float | None = None
        if body.get("ts") is not None:
            raw_ts = body["ts"]
            if not isinstance(raw_ts, str | int | float) or isinstance(raw_ts, bool):
                raise BadEvent("wrong_type", "ts must be a time")
            try:
                ts = parse_ts(raw_ts)
            except (ValueError, OverflowError) as exc:
                raise BadEvent("invalid_value", str(exc)) from None
        elif timestamp_ms is not None:
            ts = timestamp_ms / 1000.0
        if ts is None:
            raise BadEvent("missing_field", "no ts in the message and no message timestamp")
        if "request" in body or "response" in body:
            request, response = body.get("request"), body.get("response")
            if not isinstance(request, dict) or not isinstance(response, dict):
                raise BadEvent("missing_field", "a pair needs both request and response objects")
            req = self._request(request, headers, ts, as_str(body.get("principal")))
            resp = self._response(response, ts)
            req["ts"] = None  # one time for both halves: no latency to tell
            pair_id = as_str(response.get("id")) or as_str(request.get("id")) or f"t{ts}"
            return self._events(pair_id, req, resp)
        key = as_str(body.get("id")) or header(
            headers, "x-request-id", "ce_id", "ce-id")
        if key is None:
            raise BadEvent("missing_field", "a lone request or response needs an id to be joined")
        now = timestamp_ms / 1000.0 if timestamp_ms is not None else ts
        if "inputs" in body:
            entry = self._request(body, headers, ts, None)
            other = self.join.offer(key, "request", entry, now, len(value))
            return [] if other is None else self._events(key, entry, other)
        if "outputs" in body:
            entry = self._response(body, ts)
            other = self.join.offer(key, "response", entry, now, len(value))
            return [] if other is None else self._events(key, other, entry)
        raise BadEvent("missing_field", "neither inputs, outputs nor a request/response pair")

    def _events(self, key: str, req: dict[str, Any], resp: dict[str, Any]) -> list[Result]:
        if req["ctx"]["principal"] is None:
            return [DeadLetter(self.name, "missing_principal",
                               "no header or parameter names the caller")]
        if resp["ctx"]["model_id"] is None:
            return [DeadLetter(self.name, "missing_field", "response has no model_name")]
        return list(pair_events(key, req, resp))

    def _request(
        self, request: dict[str, Any], headers: Headers, ts: float, principal: str | None
    ) -> dict[str, Any]:
        opts = self.options
        rows = v2_rows(request.get("inputs"), opts.max_items)
        params = request.get("parameters")
        if principal is None:
            principal = header(headers, *opts.principal_headers)
        if principal is None and opts.principal_parameter and isinstance(params, dict):
            principal = as_str(params.get(opts.principal_parameter))
        source_ip = header(headers, *opts.source_ip_headers)
        ctx: dict[str, Any] = {
            "principal": principal or opts.default_principal,
            "source_ip": source_ip.split(",")[0].strip() if source_ip else None,
            "attributes": {},
        }
        return {"rows": rows, "ts": ts, "ctx": ctx}

    def _response(self, response: dict[str, Any], ts: float) -> dict[str, Any]:
        opts = self.options
        answers = v2_answers(
            response.get("outputs"), opts.max_items, opts.prediction_output,
            opts.probabilities_output,
        )
        ctx: dict[str, Any] = {
            "model_id": as_str(response.get("model_name")),
            "model_version": as_str(response.get("model_version")),
            "attributes": {},
        }
        return {"answers": [[a.prediction, a.probabilities] for a in answers], "ts": ts, "ctx": ctx}
