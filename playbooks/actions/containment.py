"""The ``kafka`` containment action: action messages for enforcement points.

Its messages carry real ids (the actions topic is internal: an enforcement point
needs the real principal to block it), and with ``ttl`` the revert message
follows when it expires.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

from pydantic import Field, model_validator

from detectors.findings import rfc3339
from playbooks.actions.base import ActionCall, ActionRuntime, ActionType, Params
from playbooks.config import Duration
from playbooks.outcomes import PermanentFailure, RetryLater
from playbooks.templates import Template, TemplateField

KafkaVerb: TypeAlias = Literal[
    "block_principal", "revoke_key", "rate_limit", "quarantine_dataset", "rollback_model"
]
#: The message that undoes a verb when its TTL expires; verbs absent here cannot expire.
REVERT: Final[Mapping[str, str]] = {
    "block_principal": "unblock_principal",
    "rate_limit": "remove_rate_limit",
    "quarantine_dataset": "release_dataset",
}
_DEFAULT_TARGET: Final[Mapping[str, str]] = {
    "block_principal": "{entity.id}",
    "revoke_key": "{entity.id}",
    "rate_limit": "{entity.id}",
    "quarantine_dataset": "{entity.id}",
    "rollback_model": "{model_id}",
}
_TARGET_TYPE: Final[Mapping[str, str]] = {
    "block_principal": "principal",
    "revoke_key": "key",
    "rate_limit": "principal",
    "quarantine_dataset": "resource",
    "rollback_model": "model",
}


class KafkaParams(Params):
    action: KafkaVerb
    #: Template for the target id (real ids: the actions topic is internal).
    target: TemplateField | None = None
    #: Undo after this long (publishes the revert message); needs a revertible action.
    ttl: Duration | None = Field(None, gt=0)
    #: Static parameters for the enforcement point, e.g. ``{requests_per_minute: 10}``.
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    #: Override ``playbooks.actions_topic``.
    topic: str | None = None
    phases: list[Literal["alert", "escalated"]] | None = None

    @model_validator(mode="after")
    def _check(self) -> KafkaParams:
        if self.ttl is not None and self.action not in REVERT:
            raise ValueError(f"{self.action} cannot be reverted: drop ttl "
                             f"(revertible: {', '.join(REVERT)})")
        return self


class KafkaAction(ActionType):
    name = "kafka"
    category = "containment"
    description = ("Publish an action message (block principal, revoke key, rate-limit, "
                   "quarantine dataset, roll back model) to the actions topic for "
                   "enforcement points; with ttl, the revert message follows when it expires.")
    Params = KafkaParams
    example = """\
rate-limit-caller:
  type: kafka
  requires_approval: true
  params:
    action: rate_limit
    target: "{entity.id}"
    ttl: 1h                  # publishes remove_rate_limit after an hour
    params: {requests_per_minute: 10}
"""
    default_phases = ("alert",)

    params: KafkaParams

    def destination(self) -> str:
        return "kafka"

    def _target(self, call: ActionCall) -> str:
        template = self.params.target or Template.compile(_DEFAULT_TARGET[self.params.action])
        return template.render(call.context(None, outside=False)).strip()

    def _message(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        if call.phase == "revert":
            original = dict(call.extra.get("original") or {})
            if not original:
                raise PermanentFailure("revert without the original message")
            now = runtime.clock()
            return {
                **original,
                "action": REVERT.get(str(original.get("action")), "revert"),
                "action_id": call.idempotency_key,
                "revert_of": original.get("action_id"),
                "issued_at": rfc3339(now, millis=False),
                "expires_at": None,
            }
        target = self._target(call)
        if not target:
            raise PermanentFailure(f"{self.params.action}: the target template gave nothing")
        now = runtime.clock()
        f = call.finding
        return {
            "schema": "mlwatchd.action/v1",
            "action_id": call.idempotency_key,
            "action": self.params.action,
            "target": {"type": _TARGET_TYPE[self.params.action], "id": target},
            "params": dict(self.params.params),
            "issued_at": rfc3339(now, millis=False),
            "expires_at": rfc3339(now + self.params.ttl, millis=False) if self.params.ttl
            else None,
            "revert_of": None,
            "reason": {
                "finding_id": f.finding_id, "kind": f.kind, "detector": f.detector,
                "severity": f.severity, "model_id": f.model_id, "route": call.route,
                "atlas": list(f.atlas), "mitigations": list(call.mitigations),
            },
            "approved_by": call.extra.get("approved_by"),
        }

    def deliver(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        if runtime.publish is None:
            raise PermanentFailure("no Kafka publisher was given to the engine")
        message = self._message(call, runtime)
        topic = self.params.topic or runtime.actions_topic
        value = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
        headers = [
            ("mlwatchd-action", str(message["action"]).encode()),
            ("idempotency-key", call.idempotency_key.encode()),
            ("content-type", b"application/json"),
        ]
        try:
            runtime.publish(topic, str(message["target"]["id"]).encode(), value, headers)
        except Exception as exc:
            raise RetryLater(f"publish failed: {type(exc).__name__}: {str(exc)[:150]}") from None
        result: dict[str, Any] = {"action": message["action"], "action_id": message["action_id"]}
        if call.phase != "revert" and self.params.ttl:
            result["revert_after"] = self.params.ttl
            result["original"] = message
        return result

    def describe(self, call: ActionCall, runtime: ActionRuntime) -> str:
        view = call.context(runtime.pseudonymizer, outside=True)
        template = self.params.target or Template.compile(_DEFAULT_TARGET[self.params.action])
        target = template.render(view) or "?"
        text = f"{self.params.action} {_TARGET_TYPE[self.params.action]} {target}"
        if self.params.params:
            text += " (" + ", ".join(f"{k}={v}" for k, v in self.params.params.items()) + ")"
        if self.params.ttl:
            text += f" for {_human(self.params.ttl)}, then {REVERT[self.params.action]}"
        return text

    def preview(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        message = self._message(call, runtime)
        # Dry-run audit records go to logs: keep the target pseudonymous there too.
        message["target"] = {**message["target"], "id": self.describe(call, runtime)}
        return {"message": message}


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
