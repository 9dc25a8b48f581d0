"""Action types: what a playbook can do when a route matches.

Every action type describes itself (Falco Talon's actionners): ``name``,
``category``, ``description``, a typed ``Params`` model validated when the
playbook is loaded (never when it fires) and a YAML ``example``. The registry
is the explicit :data:`ACTION_TYPES` list; nothing registers itself on import.

An action implements one method, :meth:`ActionType.deliver`, which makes one
attempt and returns what to remember (e.g. a Slack ``ts``) or raises
:class:`~playbooks.outcomes.RetryLater` / :class:`~playbooks.outcomes.PermanentFailure`;
the outbox (:mod:`playbooks.outbox`) owns retries, backoff, idempotency and
the audit trail (StreamAlert's outputs registry). :meth:`ActionType.preview`
is what a dry run records instead.

Privacy: Slack, webhook, OCSF and PagerDuty actions only ever see the
*outside* view of a finding (:func:`playbooks.render.outside_view`: pseudonyms
for principals and IPs when enabled, a masked summary, statistics-only
evidence). The kafka action talks to the team's own enforcement points, which
need the real principal to block it, so its messages carry real ids (like the
findings topic).

Phases an action can act on: ``alert`` (a new incident, or a more severe
finding in one), ``repeat`` ("N more in the last M minutes"), ``escalated``,
``acknowledged``, ``resolved``, and for the engine's own use ``approval``
(an Approve/Deny request), ``decision`` (its outcome) and ``revert`` (a TTL
expired).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeAlias

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from detectors.findings import Finding, rfc3339
from playbooks.config import Duration
from playbooks.http import check_url, post
from playbooks.ocsf import Activity, to_ocsf
from playbooks.outcomes import PermanentFailure, RetryLater
from playbooks.privacy import Pseudonymizer
from playbooks.render import (
    SlackMessage,
    outside_view,
    render_alert,
    render_approval,
    render_decision,
    render_notice,
)
from playbooks.slack_post import SlackPoster
from playbooks.templates import Template, TemplateField, compile_tree, render_tree

__all__ = [
    "ACTION_TYPES",
    "PHASES",
    "ActionCall",
    "ActionRuntime",
    "ActionType",
    "KafkaAction",
    "LogAction",
    "OcsfAction",
    "PagerDutyAction",
    "Phase",
    "Publish",
    "SlackAction",
    "WebhookAction",
    "action_type",
]

Phase: TypeAlias = Literal[
    "alert", "repeat", "escalated", "acknowledged", "resolved", "approval", "decision", "revert"
]
PHASES: Final[tuple[str, ...]] = (
    "alert", "repeat", "escalated", "acknowledged", "resolved", "approval", "decision", "revert"
)
#: Phases a playbook author may list in an action's ``phases``
#: (not ``on``: YAML 1.1 reads that key as true).
_USER_PHASES = Literal["alert", "repeat", "escalated", "acknowledged", "resolved"]

#: ``publish(topic, key, value, headers)``: the daemon's Kafka producer; raises on failure.
Publish: TypeAlias = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]]], None]

_log = structlog.get_logger("mlwatchd.playbooks")


@dataclass
class ActionRuntime:
    """What actions reach the world through; built once by the engine."""

    slack: SlackPoster | None = None
    publish: Publish | None = None
    actions_topic: str = "mlwatchd.actions"
    interactivity: bool = False
    pseudonymizer: Pseudonymizer | None = None
    clock: Callable[[], float] = time.time


@dataclass
class ActionCall:
    """One delivery attempt's input: the finding, where it is in its incident, and why."""

    phase: str
    route: str
    action: str
    finding: Finding
    idempotency_key: str
    incident_id: str = ""
    incident_count: int = 1
    incident_first_seen: float = 0.0
    mitigations: Sequence[str] = ()
    #: Results of this action's earlier deliveries in this incident (e.g. the thread ``ts``).
    state: Mapping[str, Any] = field(default_factory=dict)
    #: Phase details: notice text, approval id, decision, the message to revert.
    extra: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    #: When an earlier attempt whose outcome is unknown started (it may have
    #: been delivered: timed out, connection lost, process died); None if none.
    unknown_since: float | None = None

    def context(self, pseudonymizer: Pseudonymizer | None, *, outside: bool) -> dict[str, Any]:
        """Template variables; ``outside=True`` gives the pseudonymised, masked view."""
        if outside:
            view = outside_view(self.finding, pseudonymizer)
        else:
            f = self.finding
            view = outside_view(f, None)
            view.update({"summary": f.summary, "entity.id": f.entity.id})
        view.update({
            "mitigations": list(self.mitigations),
            "route": self.route,
            "action": self.action,
            "phase": self.phase,
            "incident.count": self.incident_count,
            "incident.first_seen": rfc3339(self.incident_first_seen or self.extra.get(
                "now", 0.0), millis=False),
        })
        return view


class Params(BaseModel):
    """Base of every action's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _env_or_file_secret(env: str | None, path: Path | None, what: str) -> SecretStr | None:
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise ValueError(f"{what}: environment variable {env} is not set")
        return SecretStr(value)
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{what}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"{what}: {path} is empty")
        return SecretStr(value)
    return None


class ActionType(ABC):
    """Base of action types; subclasses set the class attributes and ``deliver``."""

    name: ClassVar[str]
    category: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    example: ClassVar[str]
    #: Phases acted on when the playbook's ``phases`` does not say.
    default_phases: ClassVar[tuple[str, ...]]

    def __init__(self, action_name: str, params: BaseModel) -> None:
        self.action_name = action_name
        self.params = params

    def phases(self) -> frozenset[str]:
        """The phases this configured action acts on (``approval``/``decision``: Slack's)."""
        on = getattr(self.params, "phases", None)
        return frozenset(on if on is not None else self.default_phases)

    def handles(self, phase: str) -> bool:
        return phase in self.phases()

    def destination(self) -> str:
        """Deliveries to one destination pause together after a 429."""
        return f"{self.name}:{self.action_name}"

    def describe(self, call: ActionCall, runtime: ActionRuntime) -> str:
        """One line for an approval request: what running this will do (outside-safe)."""
        return self.description

    @abstractmethod
    def deliver(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        """One attempt; returns what to remember, raises RetryLater/PermanentFailure."""

    def preview(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        """What a dry run records instead of delivering (never secrets, outside-safe)."""
        return {"would": self.describe(call, runtime)}

    def secrets(self) -> list[str]:
        """Configured values that must never appear in logs, the outbox or the audit trail."""
        return []


# -- slack -------------------------------------------------------------------


class SlackParams(Params):
    #: Post here instead of the configured default channel (bot token only).
    channel: str | None = None
    #: Link-out URL template; values are percent-encoded.
    link: TemplateField | None = None
    link_text: str = Field("Open dashboard", max_length=30)
    phases: list[_USER_PHASES] | None = None

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


# -- webhook -----------------------------------------------------------------


_DEFAULT_BODY: Final = {
    "source": "mlwatchd",
    "phase": "{phase}",
    "route": "{route}",
    "finding_id": "{finding_id}",
    "ts": "{ts}",
    "kind": "{kind}",
    "detector": "{detector}",
    "severity": "{severity}",
    "summary": "{summary}",
    "entity": {"type": "{entity.type}", "id": "{entity.id}"},
    "model_id": "{model_id}",
    "atlas": "{atlas}",
    "mitigations": "{mitigations}",
    "evidence": "{evidence}",
    "incident": {"count": "{incident.count}", "first_seen": "{incident.first_seen}"},
}


class _HttpParams(Params):
    timeout: Duration = Field(10.0, gt=0, le=60)
    #: Extra CA bundle for a private CA. Verification itself cannot be turned off.
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value


class _SignedPostParams(_HttpParams):
    url: str | None = None
    #: Read the URL from this environment variable instead (URLs often embed tokens).
    url_env: str | None = None
    #: The HMAC-SHA256 key: from an environment variable or a file, never inline.
    secret_env: str | None = None
    secret_file: Path | None = None
    signature_header: str = "X-Mlwatchd-Signature"
    headers: dict[str, str] = Field(default_factory=dict)
    #: Header name -> environment variable holding its value (e.g. a SIEM's
    #: ``Authorization: Splunk <token>``), so that tokens stay out of the YAML.
    headers_env: dict[str, str] = Field(default_factory=dict)
    phases: list[_USER_PHASES] | None = None

    _secret: SecretStr | None = PrivateAttr(None)
    _url: str = PrivateAttr("")
    _headers: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _resolve(self) -> _SignedPostParams:
        if bool(self.url) == bool(self.url_env):
            raise ValueError("give exactly one of url, url_env")
        url = self.url
        if self.url_env:
            url = os.environ.get(self.url_env, "")
            if not url:
                raise ValueError(f"url_env: environment variable {self.url_env} is not set")
        try:
            self._url = check_url(url or "")
        except ValueError as exc:
            raise ValueError(f"url {exc}") from None
        secret = _env_or_file_secret(self.secret_env, self.secret_file, "secret")
        if secret is None:
            raise ValueError("a signing secret is required: secret_env or secret_file")
        self._secret = secret
        headers = dict(self.headers)
        for name, env in self.headers_env.items():
            value = os.environ.get(env, "")
            if not value:
                raise ValueError(f"headers_env: {name}: environment variable {env} is not set")
            headers[name] = value
        for name in headers:
            if name.lower() in ("content-type", "content-length", "host",
                                self.signature_header.lower()):
                raise ValueError(f"headers: {name} is set by mlwatchd")
        self._headers = headers
        return self


class WebhookParams(_SignedPostParams):
    #: JSON body; string leaves are templates (a lone ``{var}`` keeps the value's type).
    body: dict[str, Any] = Field(default_factory=lambda: dict(_DEFAULT_BODY))

    _body: Any = PrivateAttr(None)

    @model_validator(mode="after")
    def _compile(self) -> WebhookParams:
        self._body = compile_tree(self.body)
        return self


class _SignedPost(ActionType):
    """POST a JSON body signed with HMAC-SHA256; subclasses say what the body is."""

    params: _SignedPostParams

    @abstractmethod
    def _body(self, call: ActionCall, runtime: ActionRuntime) -> bytes:
        """The exact bytes sent (and signed)."""

    def deliver(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        body = self._body(call, runtime)
        secret = self.params._secret
        assert secret is not None
        signature = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
        headers = {
            **self.params._headers,
            "Content-Type": "application/json",
            "User-Agent": "mlwatchd",
            self.params.signature_header: f"sha256={signature}",
            "Idempotency-Key": call.idempotency_key,
        }
        answer = post(self.params._url, body, headers, timeout_s=self.params.timeout,
                      ca_file=self.params.ca_file)
        return {"status": answer.status}

    def secrets(self) -> list[str]:
        secret = self.params._secret
        return [self.params._url, *self.params._headers.values(),
                *([secret.get_secret_value()] if secret else [])]

    def preview(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        return {"body": json.loads(self._body(call, runtime))}


class WebhookAction(_SignedPost):
    name = "webhook"
    category = "notification"
    description = ("POST a JSON body (from a template) signed with HMAC-SHA256 over the "
                   "body; TLS verification always on.")
    Params = WebhookParams
    example = """\
soar-webhook:
  type: webhook
  params:
    url_env: MLWATCHD_SOAR_URL          # or url: https://soar.example.com/hooks/mlwatchd
    secret_env: MLWATCHD_SOAR_SECRET    # or secret_file: /run/secrets/soar-hmac
    timeout: 5s
    phases: [alert, resolved]
    body:
      title: "[{severity}] {kind} on {entity.type} {entity.id}"
      finding: "{finding_id}"
      evidence: "{evidence}"
"""
    default_phases = ("alert", "escalated", "resolved")

    params: WebhookParams

    def _body(self, call: ActionCall, runtime: ActionRuntime) -> bytes:
        rendered = render_tree(self.params._body, call.context(runtime.pseudonymizer,
                                                               outside=True))
        return json.dumps(rendered, separators=(",", ":"), sort_keys=True).encode()

    def describe(self, call: ActionCall, runtime: ActionRuntime) -> str:
        return "POST a signed JSON notice to the configured webhook"


# -- ocsf ----------------------------------------------------------------------


class OcsfParams(_SignedPostParams):
    """A SIEM's HTTP collector; the body is the OCSF Detection Finding, not a template."""


#: Playbook phase -> (OCSF activity, status); ``alert`` follows the finding.
_OCSF_PHASE: Final[Mapping[str, tuple[Activity, Literal["in_progress", "resolved"] | None]]] = {
    "repeat": ("update", None),
    "escalated": ("update", None),
    "acknowledged": ("update", "in_progress"),
    "resolved": ("close", "resolved"),
}


class OcsfAction(_SignedPost):
    name = "ocsf"
    category = "siem"
    description = ("POST each finding as an OCSF 1.8 Detection Finding (class 2004) to a SIEM's "
                   "HTTP collector: Create for a new incident, Update for an update, Close "
                   "when resolved; signed like the webhook, pseudonymised, statistics only.")
    Params = OcsfParams
    example = """\
siem-ocsf:
  type: ocsf
  params:
    url_env: MLWATCHD_SIEM_URL          # e.g. https://siem.example.com/services/collector/raw
    secret_env: MLWATCHD_SIEM_SECRET    # HMAC-SHA256 key (X-Mlwatchd-Signature)
    headers_env: {Authorization: MLWATCHD_SIEM_AUTH}   # e.g. "Splunk <HEC token>"
    timeout: 5s
    phases: [alert, escalated, resolved]
"""
    default_phases = ("alert", "repeat", "escalated", "acknowledged", "resolved")

    params: OcsfParams

    def event(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        """The OCSF event this call sends (the outside view: pseudonyms, statistics)."""
        activity, status = _OCSF_PHASE.get(call.phase, (None, None))
        return to_ocsf(call.finding, activity=activity, status=status,
                       pseudonymizer=runtime.pseudonymizer)

    def _body(self, call: ActionCall, runtime: ActionRuntime) -> bytes:
        return json.dumps(self.event(call, runtime), separators=(",", ":"),
                          sort_keys=True).encode()

    def describe(self, call: ActionCall, runtime: ActionRuntime) -> str:
        return "POST the finding as an OCSF Detection Finding to the SIEM"


# -- kafka -------------------------------------------------------------------

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


# -- pagerduty ---------------------------------------------------------------

_PD_SEVERITY: Final = {"critical": "critical", "high": "error", "medium": "warning",
                       "low": "info", "info": "info"}
_PD_EVENT: Final = {"alert": "trigger", "escalated": "trigger", "repeat": "trigger",
                    "acknowledged": "acknowledge", "resolved": "resolve"}


class PagerDutyParams(_HttpParams):
    url: str = "https://events.pagerduty.com/v2/enqueue"
    #: The integration's routing key: from an environment variable or a file.
    routing_key_env: str | None = None
    routing_key_file: Path | None = None
    #: PagerDuty dedup_key; the same key triggers, acknowledges and resolves one incident.
    dedup_key: TemplateField = Field(default_factory=lambda: Template.compile(
        "mlwatchd:{route}:{finding_id}"))
    source: str = "mlwatchd"
    link: TemplateField | None = None
    phases: list[_USER_PHASES] | None = None

    _routing_key: SecretStr | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _resolve(self) -> PagerDutyParams:
        try:
            check_url(self.url)
        except ValueError as exc:
            raise ValueError(f"url {exc}") from None
        key = _env_or_file_secret(self.routing_key_env, self.routing_key_file, "routing_key")
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


# -- log ---------------------------------------------------------------------


class LogParams(Params):
    level: Literal["info", "warning", "error"] = "warning"
    phases: list[_USER_PHASES] | None = None


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


#: The registry: every action type, explicitly (no import side effects).
ACTION_TYPES: Final[tuple[type[ActionType], ...]] = (
    SlackAction, WebhookAction, KafkaAction, PagerDutyAction, LogAction, OcsfAction,
)
_BY_NAME: Final[Mapping[str, type[ActionType]]] = {t.name: t for t in ACTION_TYPES}


def action_type(name: str) -> type[ActionType] | None:
    """The action type called ``name``, or None."""
    return _BY_NAME.get(name)
