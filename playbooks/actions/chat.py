"""Chat and log actions: ``slack`` (Block Kit, threaded follow-ups) and ``log``."""

from __future__ import annotations

from typing import Any, Literal

import structlog
from pydantic import Field, field_validator

from detectors.findings import rfc3339
from playbooks.actions.base import ActionCall, ActionRuntime, ActionType, Params, UserPhase
from playbooks.outcomes import PermanentFailure
from playbooks.render import SlackMessage
from playbooks.slack_messages import (
    render_alert,
    render_approval,
    render_decision,
    render_notice,
)
from playbooks.templates import Template, TemplateField

_log = structlog.get_logger("mlwatchd.playbooks")


class SlackParams(Params):
    #: Post here instead of the configured default channel (bot token only).
    channel: str | None = None
    #: Link-out URL template; values are percent-encoded.
    link: TemplateField | None = None
    link_text: str = Field("Open dashboard", max_length=30)
    phases: list[UserPhase] | None = None

    @field_validator("link")
    @classmethod
    def _link_scheme(cls, value: Template | None) -> Template | None:
        if value is not None and not value.source.startswith(("https://", "http://")):
            raise ValueError("link must start with https:// (or http://)")
        return value


class SlackAction(ActionType):
    name = "slack"
    category = "notification"
    description = ("Block Kit message: summary, severity, entity, evidence statistics, ATLAS "
                   "ids and mitigations, a link-out; repeats, escalation and the resolved "
                   "notice go into the first message's thread (bot token).")
    Params = SlackParams
    example = """\
slack-security:
  type: slack
  params:
    channel: "#ml-security"          # bot token only; default: slack.channel
    link: "https://grafana.example.com/d/mlwatchd?var-model={model_id}&var-finding={finding_id}"
    phases: [alert, repeat, escalated, acknowledged, resolved]
"""
    default_phases = ("alert", "repeat", "escalated", "acknowledged", "resolved")

    params: SlackParams

    def destination(self) -> str:
        return "slack"  # one workspace: a 429 applies to every Slack action

    def handles(self, phase: str) -> bool:
        return phase in ("approval", "decision") or super().handles(phase)

    def _message(self, call: ActionCall, runtime: ActionRuntime) -> SlackMessage:
        p = runtime.pseudonymizer
        extra = call.extra
        if call.phase == "alert" or (call.phase == "escalated" and not call.state.get("ts")):
            # An escalation route's first message about the incident is a full alert.
            link = None
            if self.params.link is not None:
                link = self.params.link.render_url(call.context(p, outside=True))
            return render_alert(
                call.finding, p, route=call.route, mitigations=call.mitigations, link=link,
                link_text=self.params.link_text,
                ack_value=call.incident_id if runtime.interactivity and call.incident_id else None,
                repeats=int(extra.get("repeats", 0)),
            )
        if call.phase == "approval":
            return render_approval(
                call.finding, p, route=call.route, action=str(extra.get("target_action", "")),
                action_type=str(extra.get("target_type", "")), what=str(extra.get("what", "")),
                approval_id=str(extra["approval_id"]) if runtime.interactivity else None,
                expires=rfc3339(float(extra.get("expires_at", 0.0)), millis=False),
                mitigations=call.mitigations,
            )
        return render_notice(call.finding, p, headline=str(extra.get("headline", call.phase)),
                             detail=str(extra.get("detail", "")))

    def deliver(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        slack = runtime.slack
        if slack is None:
            raise PermanentFailure("slack is not configured")
        message = self._message(call, runtime)
        thread = call.state.get("ts")
        if call.phase == "decision":
            original = call.extra.get("message_ts")
            if slack.web_api and original:
                approval = self._message(
                    ActionCall(**{**call.__dict__, "phase": "approval"}), runtime)
                decided = render_decision(approval, str(call.extra.get("headline", "Decided")),
                                          call.extra.get("user"))
                return slack.update(decided, channel=str(call.extra.get("message_channel")),
                                    ts=str(original))
        # Follow-ups (and a more severe finding) go into the incident's thread.
        thread_ts = thread if call.phase != "approval" and slack.web_api else None
        return slack.post(message, channel=self.params.channel, thread_ts=thread_ts,
                          key=call.idempotency_key, finding_id=call.finding.finding_id,
                          unknown_since=call.unknown_since)

    def preview(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        return {"text": self._message(call, runtime).text}


class LogParams(Params):
    level: Literal["info", "warning", "error"] = "warning"
    phases: list[UserPhase] | None = None


class LogAction(ActionType):
    name = "log"
    category = "notification"
    description = "A structured log line (stderr) per finding and lifecycle step."
    Params = LogParams
    example = """\
log-finding:
  type: log
  params: {level: warning}
"""
    default_phases = ("alert", "repeat", "escalated", "acknowledged", "resolved")

    params: LogParams

    def destination(self) -> str:
        return "log"

    def deliver(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        f = call.finding
        getattr(_log, self.params.level)(
            "playbook_finding", phase=call.phase, route=call.route, action=call.action,
            finding_id=f.finding_id, kind=f.kind, detector=f.detector, severity=f.severity,
            entity_type=f.entity.type, model_id=f.model_id,
            incident_count=call.incident_count, **{
                k: v for k, v in call.extra.items() if k in ("headline", "detail")},
        )
        return {}

    def describe(self, call: ActionCall, runtime: ActionRuntime) -> str:
        return f"log at {self.params.level}"
