"""``litellm``: the LiteLLM proxy's StandardLoggingPayload, one per message.

Each call through the gateway becomes one inference event that keeps no
prompt or completion text: the features are numbers about the call (token
counts, cost, cache hit, error), the prediction is the call's ``status``, the
model is ``model_group`` (else ``model``), and the caller is the first of
``caller_fields`` present (``end_user``, else the hash of the virtual key). The
text's lengths, and nothing else of it, are added when ``text_features`` is on.

>>> fmt = LiteLLMFormat(LiteLLMOptions())
>>> [ev] = fmt.decode(b'{"id": "c1", "model": "gpt-4o", "model_group": "chat",'
...     b' "status": "success", "prompt_tokens": 12, "completion_tokens": 30,'
...     b' "response_cost": 0.0004, "startTime": 1767225600.0, "endTime": 1767225601.5,'
...     b' "messages": [{"role": "user", "content": "my secret plan"}],'
...     b' "metadata": {"user_api_key_hash": "88dc28"}}', [], None)
>>> ev.event.principal, ev.event.model_id, ev.event.latency_ms, ev.event.features["prompt_tokens"]
('88dc28', 'chat', 1500.0, 12.0)
>>> "secret" in str(ev.event)
False
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field

from detectors.events import BadEvent

from .base import (
    Decoded,
    FormatOptions,
    Headers,
    Result,
    as_str,
    guarded,
    load_json,
    make_event,
    obj,
    scalar_attrs,
)

__all__ = ["LiteLLMFormat", "LiteLLMOptions"]

_NUMBERS = ("prompt_tokens", "completion_tokens", "total_tokens", "response_cost",
            "saved_cache_cost")


class LiteLLMOptions(FormatOptions):
    """Who the caller is, and whether the text's lengths are features."""

    caller_fields: list[str] = Field(
        default_factory=lambda: ["end_user", "metadata.user_api_key_hash"],
        description="dotted paths into the payload; the first non-empty names the caller",
    )
    default_principal: str | None = "anonymous"
    text_features: bool = Field(
        False, description="add prompt_chars and completion_chars (lengths only, never text)"
    )


def _path(payload: Mapping[str, Any], dotted: str) -> Any:
    node: Any = payload
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _text_length(value: Any, budget: int = 10_000) -> int:
    """Characters of text in a messages/response structure (bounded walk)."""
    total, stack, seen = 0, [value], 0
    while stack and seen < budget:
        node = stack.pop()
        seen += 1
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, list):
            stack.extend(node[:1000])
        elif isinstance(node, dict):
            for key in ("content", "text", "message", "choices"):
                if key in node:
                    stack.append(node[key])
    return total


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class LiteLLMFormat:
    """LiteLLM StandardLoggingPayload into text-free inference events."""

    name: ClassVar[str] = "litellm"

    def __init__(self, options: LiteLLMOptions | None = None) -> None:
        self.options = options or LiteLLMOptions()

    def decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        return guarded(self.name, self._decode, value, headers, timestamp_ms, self.options)

    def _decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        p = load_json(value)
        if not isinstance(p, dict):
            raise BadEvent("not_an_object", "a StandardLoggingPayload is a JSON object")
        call_id = as_str(p.get("id"))
        model = as_str(p.get("model_group")) or as_str(p.get("model"))
        if call_id is None or model is None:
            raise BadEvent("missing_field", "id and model (or model_group) are required")
        start, end = _number(p.get("startTime")), _number(p.get("endTime"))
        ts = end if end is not None else start
        if ts is None and timestamp_ms is not None:
            ts = timestamp_ms / 1000.0
        if ts is None:
            raise BadEvent("missing_field", "no startTime/endTime and no message timestamp")
        caller = None
        for path in self.options.caller_fields:
            caller = as_str(_path(p, path))
            if caller is not None:
                break
        caller = caller or self.options.default_principal
        if caller is None:
            raise BadEvent("missing_principal", "no caller field in the payload")
        status = as_str(p.get("status")) or "unknown"
        features: dict[str, float | str | None] = {}
        for key in _NUMBERS:
            number = _number(p.get(key))
            if number is not None:
                features[key] = number
        features["cache_hit"] = 1.0 if p.get("cache_hit") is True else 0.0
        features["error"] = 0.0 if status == "success" else 1.0
        if self.options.text_features:
            features["prompt_chars"] = float(_text_length(p.get("messages")))
            features["completion_chars"] = float(_text_length(p.get("response")))
        error = p.get("error_information")
        metadata = obj(p.get("metadata"))
        attributes = scalar_attrs({
            "call_type": p.get("call_type"),
            "deployment": p.get("model"),
            "model_deployment_id": p.get("model_id"),
            "team_id": metadata.get("user_api_key_team_id"),
            "trace_id": p.get("trace_id"),
            "error_code": error.get("error_code") if isinstance(error, dict) else None,
            "error_class": error.get("error_class") if isinstance(error, dict) else None,
        })
        fields: dict[str, Any] = {
            "ts": ts,
            "model_id": model,
            "request_id": call_id,
            "principal": caller,
            "features": features,
            "prediction": status,
        }
        ip = as_str(p.get("requester_ip_address"))
        if ip is not None:
            fields["source_ip"] = ip
        if start is not None and end is not None and end >= start:
            fields["latency_ms"] = (end - start) * 1000.0
        if attributes:
            fields["attributes"] = attributes
        return [Decoded(make_event("inference", fields))]

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {}
