"""``k8s-audit``: Kubernetes audit events (``audit.k8s.io/v1``) into audit events.

A message holds one ``Event`` (the log backend's lines) or an ``EventList``
(the webhook backend's batches; each item is mapped on its own). Only the
``ResponseComplete`` stage is read, so a request logged at several stages
counts once; events of no interest are skipped and counted.

- creating or changing a ``rolebindings`` / ``clusterrolebindings`` object is
  a ``role.assign`` on ``role:<RoleKind>/<name>`` (from ``requestObject.roleRef``
  when the policy logs request bodies), with ``attributes.grantee`` the bound
  subject; when the caller is among the subjects the grantee is the caller,
  so a self-grant is visible;
- ``get`` / ``list`` / ``watch`` of ``secrets`` is a ``secret.read``;
- creating or changing an ``inferenceservices`` object is a ``model.deploy``
  (deleting it a ``model.delete``) on ``model:<model_id_template>``.

The actor is ``user.username``; the outcome follows ``responseStatus.code``.

>>> fmt = K8sAuditFormat(K8sAuditOptions())
>>> ev = (b'{"kind": "Event", "apiVersion": "audit.k8s.io/v1", "stage": "ResponseComplete",'
...       b' "verb": "get", "user": {"username": "system:serviceaccount:ml:trainer"},'
...       b' "sourceIPs": ["10.0.0.7"], "objectRef": {"resource": "secrets", "namespace":'
...       b' "ml", "name": "s3-creds"}, "responseStatus": {"code": 200},'
...       b' "requestReceivedTimestamp": "2026-01-01T00:00:00.000000Z"}')
>>> [(r.event.action, r.event.resource, r.event.source_ip) for r in fmt.decode(ev, [], None)]
[('secret.read', 'secret:ml/s3-creds', '10.0.0.7')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Final

from pydantic import Field, field_validator

from detectors.events import BadEvent

from .base import (
    DeadLetter,
    Decoded,
    FormatOptions,
    Headers,
    Result,
    as_str,
    guarded,
    load_json,
    make_event,
    obj,
    outcome_of_status,
    rfc3339_seconds,
)
from .kserve import check_template, model_id_from

__all__ = ["K8sAuditFormat", "K8sAuditOptions"]

_CHANGE: Final = frozenset({"create", "update", "patch"})
_READ: Final = frozenset({"get", "list", "watch"})
_BINDINGS: Final = frozenset({"rolebindings", "clusterrolebindings"})


class K8sAuditOptions(FormatOptions):
    """How an InferenceService is named as a model, and which stages count."""

    model_id_template: str = Field("{namespace}/{name}", description="fields: name, namespace")
    stages: list[str] = Field(default_factory=lambda: ["ResponseComplete"])

    _template = field_validator("model_id_template")(lambda value: check_template(value))


def _subject_id(subject: Mapping[str, Any], namespace: str | None) -> str | None:
    kind, name = as_str(subject.get("kind")), as_str(subject.get("name"))
    if name is None:
        return None
    if kind == "ServiceAccount":
        ns = as_str(subject.get("namespace")) or namespace or "default"
        return f"system:serviceaccount:{ns}:{name}"
    return name


class K8sAuditFormat:
    """Kubernetes audit Events (or EventLists) into contract audit events."""

    name: ClassVar[str] = "k8s-audit"

    def __init__(self, options: K8sAuditOptions | None = None) -> None:
        self.options = options or K8sAuditOptions()
        self.skipped = 0

    def decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        return guarded(self.name, self._decode, value, headers, timestamp_ms, self.options)

    def _decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        body = load_json(value)
        if not isinstance(body, dict):
            raise BadEvent("not_an_object", "an audit Event is a JSON object")
        if body.get("kind") != "EventList":
            return self._one(body, None)
        items = body.get("items")
        if not isinstance(items, list):
            raise BadEvent("wrong_type", "EventList items must be a list")
        cap = self.options.max_items
        out: list[Result] = []
        for i, item in enumerate(items[:cap]):
            out.extend(self._one(item, i))
        if len(items) > cap:
            out.append(DeadLetter(self.name, "too_many_items",
                                  f"{len(items) - cap} events beyond {cap} not read", cap))
        return out

    def _one(self, ev: Any, item: int | None) -> list[Result]:
        try:
            fields = self._map(ev)
            if fields is None:
                self.skipped += 1
                return []
            return [Decoded(make_event("audit", fields), item)]
        except BadEvent as exc:
            return [DeadLetter(self.name, exc.reason, exc.detail[:200], item)]

    def _map(self, ev: Any) -> dict[str, Any] | None:
        if not isinstance(ev, dict):
            raise BadEvent("not_an_object", "an audit Event is a JSON object")
        if as_str(ev.get("stage")) not in self.options.stages:
            return None
        ref = ev.get("objectRef")
        verb = as_str(ev.get("verb"))
        if not isinstance(ref, dict) or verb is None:
            return None
        resource = as_str(ref.get("resource"))
        if resource is None or ref.get("subresource"):
            return None
        user = ev.get("user")
        actor = as_str(user.get("username")) if isinstance(user, dict) else None
        if actor is None:
            raise BadEvent("missing_field", "user.username is required")
        ts = rfc3339_seconds(ev.get("requestReceivedTimestamp")) or rfc3339_seconds(
            ev.get("stageTimestamp"))
        if ts is None:
            raise BadEvent("missing_field", "requestReceivedTimestamp must be an RFC 3339 time")
        status = ev.get("responseStatus")
        code = status.get("code") if isinstance(status, dict) else None
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        namespace, name = as_str(ref.get("namespace")), as_str(ref.get("name"))
        fields: dict[str, Any] = {"ts": ts, "actor": actor, "outcome": outcome_of_status(code)}
        ips = ev.get("sourceIPs")
        if isinstance(ips, list) and ips and as_str(ips[0]):
            fields["source_ip"] = as_str(ips[0])
        agent = as_str(ev.get("userAgent"))
        if agent is not None:
            fields["user_agent"] = agent
        attrs: dict[str, Any] = {"verb": verb, "k8s_resource": resource}
        for key, value in (("audit_id", ev.get("auditID")), ("namespace", namespace),
                           ("status_code", code)):
            if value is not None:
                attrs[key] = value if isinstance(value, int) else as_str(value)
        impersonated = ev.get("impersonatedUser")
        if isinstance(impersonated, dict) and as_str(impersonated.get("username")):
            attrs["impersonated_user"] = as_str(impersonated.get("username"))

        if resource in _BINDINGS and verb in _CHANGE:
            body = obj(ev.get("requestObject"))
            role_ref = obj(body.get("roleRef"))
            role_kind = as_str(role_ref.get("kind")) or "Role"
            role_name = as_str(role_ref.get("name")) or f"binding:{name or 'unknown'}"
            raw_subjects = body.get("subjects")
            subjects = raw_subjects if isinstance(raw_subjects, list) else []
            ids = [s for s in (_subject_id(x, namespace) for x in subjects[:100]
                               if isinstance(x, dict)) if s]
            if ids:
                attrs["grantee"] = actor if actor in ids else ids[0]
                attrs["subjects"] = ",".join(ids)[:1024]
            attrs["binding"] = name
            return {**fields, "action": "role.assign", "resource": f"role:{role_kind}/{role_name}",
                    "resource_type": "role", "attributes": attrs}
        if resource == "secrets" and verb in _READ:
            target = f"{namespace or '*'}/{name or '*'}"
            return {**fields, "action": "secret.read", "resource": f"secret:{target}",
                    "resource_type": "secret", "attributes": attrs}
        if resource == "inferenceservices" and (verb in _CHANGE or verb == "delete"):
            model = model_id_from(self.options.model_id_template,
                                  {"name": name, "namespace": namespace})
            action = "model.delete" if verb == "delete" else "model.deploy"
            return {**fields, "action": action, "resource": f"model:{model}",
                    "resource_type": "model", "attributes": attrs}
        return None

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {"skipped": self.skipped}
