"""The ``pagerduty`` action: Events API v2 trigger, acknowledge and resolve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pydantic import Field, PrivateAttr, SecretStr, model_validator

from playbooks.actions.base import (
    ActionCall,
    ActionRuntime,
    ActionType,
    HttpParams,
    UserPhase,
    env_or_file_secret,
)
from playbooks.http import check_url, post
from playbooks.templates import Template, TemplateField

_PD_SEVERITY: Final = {"critical": "critical", "high": "error", "medium": "warning",
                       "low": "info", "info": "info"}
_PD_EVENT: Final = {"alert": "trigger", "escalated": "trigger", "repeat": "trigger",
                    "acknowledged": "acknowledge", "resolved": "resolve"}


class PagerDutyParams(HttpParams):
    url: str = "https://events.pagerduty.com/v2/enqueue"
    #: The integration's routing key: from an environment variable or a file.
    routing_key_env: str | None = None
    routing_key_file: Path | None = None
    #: PagerDuty dedup_key; the same key triggers, acknowledges and resolves one incident.
    dedup_key: TemplateField = Field(default_factory=lambda: Template.compile(
        "mlwatchd:{route}:{finding_id}"))
    source: str = "mlwatchd"
    link: TemplateField | None = None
    phases: list[UserPhase] | None = None

    _routing_key: SecretStr | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve(self) -> PagerDutyParams:
        try:
            check_url(self.url)
        except ValueError as exc:
            raise ValueError(f"url {exc}") from None
        key = env_or_file_secret(self.routing_key_env, self.routing_key_file, "routing_key")
        if key is None:
            raise ValueError("routing_key_env or routing_key_file is required")
        self._routing_key = key
        return self


class PagerDutyAction(ActionType):
    name = "pagerduty"
    category = "paging"
    description = ("PagerDuty Events API v2: trigger on alert/escalation, acknowledge when "
                   "acknowledged in Slack, resolve when the condition clears (one dedup_key).")
    Params = PagerDutyParams
    example = """\
page-oncall:
  type: pagerduty
  params:
    routing_key_env: MLWATCHD_PD_ROUTING_KEY
    phases: [escalated, acknowledged, resolved]
"""
    default_phases = ("alert", "escalated", "acknowledged", "resolved")

    params: PagerDutyParams

    def body(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        view = call.context(runtime.pseudonymizer, outside=True)
        event = _PD_EVENT.get(call.phase, "trigger")
        key = self.params._routing_key
        assert key is not None
        body: dict[str, Any] = {
            "routing_key": key.get_secret_value(),
            "event_action": event,
            "dedup_key": self.params.dedup_key.render(view)[:255],
        }
        if event == "trigger":
            body["payload"] = {
                "summary": f"[{view['severity']}] {view['kind']} on {view['entity.type']} "
                           f"{view['entity.id']}: {view['summary']}"[:1024],
                "source": self.params.source,
                "severity": _PD_SEVERITY.get(call.finding.severity, "warning"),
                "timestamp": call.finding.ts,
                "component": view["model_id"] or None,
                "group": view["kind"],
                "class": view["detector"],
                "custom_details": {
                    "finding_id": view["finding_id"], "route": call.route,
                    "entity": {"type": view["entity.type"], "id": view["entity.id"]},
                    "atlas": view["atlas"], "mitigations": list(call.mitigations),
                    "evidence": view["evidence"], "incident_count": call.incident_count,
                    "phase": call.phase,
                },
            }
            if self.params.link is not None:
                body["links"] = [{"href": self.params.link.render_url(view),
                                  "text": "mlwatchd finding"}]
        return body

    def deliver(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        data = json.dumps(self.body(call, runtime), separators=(",", ":")).encode()
        answer = post(self.params.url, data, {"Content-Type": "application/json",
                                               "User-Agent": "mlwatchd"},
                      timeout_s=self.params.timeout, ca_file=self.params.ca_file)
        return {"status": answer.status, "event_action": _PD_EVENT.get(call.phase, "trigger")}

    def describe(self, call: ActionCall, runtime: ActionRuntime) -> str:
        return f"PagerDuty {_PD_EVENT.get(call.phase, 'trigger')}"

    def secrets(self) -> list[str]:
        key = self.params._routing_key
        return [key.get_secret_value()] if key else []

    def preview(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        body = self.body(call, runtime)
        body["routing_key"] = "<redacted>"
        return {"body": body}
