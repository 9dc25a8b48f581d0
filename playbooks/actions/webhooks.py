"""Signed HTTP POST actions: ``webhook`` (a templated JSON body) and ``ocsf``
(an OCSF Detection Finding for a SIEM's HTTP collector), both HMAC-SHA256 signed."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

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
from playbooks.ocsf import Activity, to_ocsf
from playbooks.templates import compile_tree, render_tree

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


class _SignedPostParams(HttpParams):
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
    phases: list[UserPhase] | None = None

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
        secret = env_or_file_secret(self.secret_env, self.secret_file, "secret")
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
