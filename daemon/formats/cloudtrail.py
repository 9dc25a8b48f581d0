"""``cloudtrail``: AWS CloudTrail records into audit and access events.

A message holds a CloudTrail log file's ``{"Records": [...]}`` (gzip or not),
one bare record, or an EventBridge envelope whose ``detail`` is a record. Each
record is mapped on its own, so a batch with one bad record keeps the good ones
(the bad one is a dead letter naming its index); records of no interest are
skipped and counted.

- S3 data events on ``training_buckets`` become ``dataset.read`` /
  ``dataset.write`` / ``dataset.delete`` with the bytes transferred;
- SageMaker and Bedrock calls become model and endpoint actions
  (``model.register``, ``model.deploy``, ``endpoint.update``, ``pipeline.run``,
  ...) or, for invocations, ``invoke`` access events;
- ``ConsoleLogin`` becomes a ``login``, ``AssumeRole*`` and
  ``GetSessionToken`` a ``token.issue``;
- IAM changes (``AttachUserPolicy``, ``PutUserPolicy``, ``AttachRolePolicy``,
  ``PutRolePolicy``, ``AddUserToGroup``, ``CreateAccessKey``) become grants with
  ``attributes.grantee`` set to the grantee's ARN, so a user attaching a policy
  to themselves is a self-grant for the privilege-grant detector. A role
  session granting to its own role counts as a self-grant too.

The actor is the caller's ARN (``userIdentity.arn``).

>>> fmt = CloudTrailFormat(CloudTrailOptions())
>>> rec = (b'{"Records": [{"eventTime": "2026-01-01T00:00:00Z", "eventSource":'
...        b' "iam.amazonaws.com", "eventName": "AttachUserPolicy", "userIdentity": {"type":'
...        b' "IAMUser", "arn": "arn:aws:iam::111122223333:user/mallory", "accountId":'
...        b' "111122223333", "userName": "mallory"}, "requestParameters": {"userName":'
...        b' "mallory", "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"}}, 7]}')
>>> ok, bad = fmt.decode(rec, [], None)
>>> ok.event.action, ok.event.resource, ok.event.attributes["grantee"] == ok.event.actor
('policy.attach', 'role:policy/AdministratorAccess', True)
>>> bad.item, bad.reason
(1, 'not_an_object')
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from pydantic import Field

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
    rfc3339_seconds,
)

__all__ = ["CloudTrailFormat", "CloudTrailOptions"]

_S3_VERBS: Final = {
    "GetObject": "read", "HeadObject": None, "SelectObjectContent": "read",
    "PutObject": "write", "CopyObject": "write", "CompleteMultipartUpload": "write",
    "UploadPart": None, "DeleteObject": "delete", "DeleteObjects": "delete",
}
#: eventName -> (action, resource kind, requestParameters key naming it)
_SAGEMAKER: Final[dict[str, tuple[str, str, str | None]]] = {
    "CreateModel": ("model.register", "model", "modelName"),
    "CreateModelPackage": ("model.register", "model", "modelPackageGroupName"),
    "DeleteModel": ("model.delete", "model", "modelName"),
    "CreateEndpoint": ("model.deploy", "endpoint", "endpointName"),
    "UpdateEndpoint": ("endpoint.update", "endpoint", "endpointName"),
    "DeleteEndpoint": ("endpoint.delete", "endpoint", "endpointName"),
    "CreateTrainingJob": ("pipeline.run", "pipeline", "trainingJobName"),
    "CreatePipeline": ("pipeline.update", "pipeline", "pipelineName"),
    "StartPipelineExecution": ("pipeline.run", "pipeline", "pipelineName"),
}
_BEDROCK: Final[dict[str, tuple[str, str, str | None]]] = {
    "CreateModelCustomizationJob": ("pipeline.run", "model", "customModelName"),
    "CreateProvisionedModelThroughput": ("model.deploy", "model", "modelId"),
    "DeleteCustomModel": ("model.delete", "model", "modelIdentifier"),
    "DeleteModelInvocationLoggingConfiguration": ("logging.delete", "model", None),
    "PutModelInvocationLoggingConfiguration": ("logging.update", "model", None),
}
_INVOKE: Final = {
    ("sagemaker.amazonaws.com", "InvokeEndpoint"): ("endpoint", "endpointName"),
    ("sagemaker.amazonaws.com", "InvokeEndpointAsync"): ("endpoint", "endpointName"),
    ("bedrock.amazonaws.com", "InvokeModel"): ("model", "modelId"),
    ("bedrock.amazonaws.com", "InvokeModelWithResponseStream"): ("model", "modelId"),
    ("bedrock.amazonaws.com", "Converse"): ("model", "modelId"),
    ("bedrock.amazonaws.com", "ConverseStream"): ("model", "modelId"),
}
#: eventName -> (action, grantee kind or None for the caller's own key)
_IAM: Final = {
    "AttachUserPolicy": ("policy.attach", "user"),
    "PutUserPolicy": ("policy.attach", "user"),
    "AttachRolePolicy": ("policy.attach", "role"),
    "PutRolePolicy": ("policy.attach", "role"),
    "AddUserToGroup": ("role.assign", "user"),
    "CreateAccessKey": ("permission.grant", "user"),
}
_TOKEN_EVENTS: Final = {
    "AssumeRole": "token", "AssumeRoleWithSAML": "sso", "AssumeRoleWithWebIdentity": "sso",
    "GetSessionToken": "token", "GetFederationToken": "token",
}


class CloudTrailOptions(FormatOptions):
    """Which S3 buckets (or ``bucket/prefix``) hold training data."""

    training_buckets: list[str] = Field(
        default_factory=list,
        description="S3 data events on these buckets or bucket/prefix become dataset events",
    )


def _outcome(record: Mapping[str, Any]) -> str:
    code = as_str(record.get("errorCode"))
    if code is None:
        return "success"
    lowered = code.lower()
    return "denied" if ("denied" in lowered or "unauthorized" in lowered
                        or "forbidden" in lowered) else "failure"


def _gunzip(value: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(value, limit + 1)
    except zlib.error as exc:
        raise BadEvent("not_json", f"bad gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BadEvent("too_large", f"gzip expands beyond {limit} bytes")
    return out


class CloudTrailFormat:
    """CloudTrail records into contract events, record by record."""

    name: ClassVar[str] = "cloudtrail"

    def __init__(self, options: CloudTrailOptions | None = None) -> None:
        self.options = options or CloudTrailOptions()
        self.skipped = 0
        self._buckets = [b.strip("/") for b in self.options.training_buckets if b.strip("/")]

    def decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        return guarded(self.name, self._decode, value, headers, timestamp_ms, self.options)

    def _decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        if value[:2] == b"\x1f\x8b":
            value = _gunzip(value, self.options.max_bytes)
        body = load_json(value)
        if not isinstance(body, dict):
            raise BadEvent("not_an_object", "a CloudTrail message is a JSON object")
        if isinstance(body.get("detail"), dict) and "detail-type" in body:
            body = body["detail"]  # EventBridge envelope
        records = body.get("Records")
        if records is None:
            return self._one(body, None)
        if not isinstance(records, list):
            raise BadEvent("wrong_type", "Records must be a list")
        out: list[Result] = []
        cap = self.options.max_items
        for i, record in enumerate(records[:cap]):
            out.extend(self._one(record, i))
        if len(records) > cap:
            out.append(DeadLetter(self.name, "too_many_items",
                                  f"{len(records) - cap} records beyond {cap} not read", cap))
        return out

    def _one(self, record: Any, item: int | None) -> list[Result]:
        try:
            event = self._map(record)
        except BadEvent as exc:
            return [DeadLetter(self.name, exc.reason, exc.detail[:200], item)]
        if event is None:
            self.skipped += 1
            return []
        kind, fields = event
        try:
            return [Decoded(make_event(kind, fields), item)]
        except BadEvent as exc:
            return [DeadLetter(self.name, exc.reason, exc.detail[:200], item)]

    def _map(self, r: Any) -> tuple[str, dict[str, Any]] | None:
        if not isinstance(r, dict):
            raise BadEvent("not_an_object", "a CloudTrail record is a JSON object")
        source, name = as_str(r.get("eventSource")), as_str(r.get("eventName"))
        if source is None or name is None:
            raise BadEvent("missing_field", "eventSource and eventName are required")
        ts = rfc3339_seconds(r.get("eventTime"))
        if ts is None:
            raise BadEvent("missing_field", "eventTime must be an RFC 3339 time")
        identity = obj(r.get("userIdentity"))
        actor = (as_str(identity.get("arn")) or as_str(identity.get("principalId"))
                 or as_str(identity.get("invokedBy")))
        if actor is None:
            raise BadEvent("missing_field", "userIdentity names nobody (no arn or principalId)")
        params = obj(r.get("requestParameters"))
        common: dict[str, Any] = {"ts": ts, "outcome": _outcome(r)}
        ip, agent = as_str(r.get("sourceIPAddress")), as_str(r.get("userAgent"))
        if ip is not None:
            common["source_ip"] = ip
        if agent is not None:
            common["user_agent"] = agent
        attrs: dict[str, Any] = {"event_name": name, "event_source": source}
        event_id = as_str(r.get("eventID"))
        if event_id is not None:
            attrs["event_id"] = event_id
        common["attributes"] = attrs

        if source == "s3.amazonaws.com":
            return self._s3(name, actor, params, r, common)
        if (source, name) in _INVOKE or (
            source == "runtime.sagemaker.amazonaws.com" and name.startswith("InvokeEndpoint")
        ):
            kind, key = _INVOKE.get((source, name), ("endpoint", "endpointName"))
            target = as_str(params.get(key)) or "unknown"
            return "access", {**common, "principal": actor, "action": "invoke",
                              "resource": f"{kind}:{target}", "auth_method": "token"}
        table = _SAGEMAKER if source == "sagemaker.amazonaws.com" else (
            _BEDROCK if source == "bedrock.amazonaws.com" else None)
        if table is not None:
            if name not in table:
                return None
            action, rtype, param = table[name]
            named = as_str(params.get(param)) if param is not None else "invocation-logging"
            return "audit", {**common, "actor": actor, "action": action,
                             "resource": f"{rtype}:{named or 'unknown'}", "resource_type": rtype}
        if source == "signin.amazonaws.com" and name == "ConsoleLogin":
            responses = r.get("responseElements")
            result = responses.get("ConsoleLogin") if isinstance(responses, dict) else None
            extra = r.get("additionalEventData")
            mfa = isinstance(extra, dict) and extra.get("MFAUsed") == "Yes"
            outcome = "success" if result == "Success" and common["outcome"] == "success" \
                else "failure"
            return "access", {**common, "outcome": outcome, "principal": actor,
                              "action": "login", "auth_method": "mfa" if mfa else "password"}
        if source == "sts.amazonaws.com" and name in _TOKEN_EVENTS:
            role = as_str(params.get("roleArn"))
            fields = {**common, "principal": actor, "action": "token.issue",
                      "auth_method": _TOKEN_EVENTS[name]}
            if role is not None:
                fields["resource"] = f"role:{role}"
            return "access", fields
        if source == "iam.amazonaws.com" and name in _IAM:
            return self._iam(name, actor, identity, params, r, common)
        return None

    def _s3(
        self, name: str, actor: str, params: Mapping[str, Any], r: Mapping[str, Any],
        common: dict[str, Any],
    ) -> tuple[str, dict[str, Any]] | None:
        verb = _S3_VERBS.get(name)
        bucket = as_str(params.get("bucketName"))
        if verb is None or bucket is None:
            return None
        key = as_str(params.get("key")) or ""
        path = f"{bucket}/{key}"
        dataset = next((b for b in self._buckets if path == b or path.startswith(b + "/")), None)
        if dataset is None:
            return None
        fields: dict[str, Any] = {**common, "actor": actor, "action": f"dataset.{verb}",
                                  "resource": f"dataset:{dataset}", "resource_type": "dataset"}
        extra = r.get("additionalEventData")
        if isinstance(extra, dict):
            moved = extra.get("bytesTransferredOut" if verb == "read" else "bytesTransferredIn")
            if isinstance(moved, int | float) and not isinstance(moved, bool) \
                    and 0 <= moved < 2**63:
                fields["bytes"] = int(moved)
        fields["records"] = 1
        fields["attributes"] = {**common["attributes"], "bucket": bucket, "key": key[:1024]}
        return "audit", fields

    def _iam(
        self, name: str, actor: str, identity: Mapping[str, Any], params: Mapping[str, Any],
        r: Mapping[str, Any], common: dict[str, Any],
    ) -> tuple[str, dict[str, Any]]:
        action, kind = _IAM[name]
        account = as_str(identity.get("accountId")) or as_str(r.get("recipientAccountId")) or ""
        grantee_name = as_str(params.get("userName" if kind == "user" else "roleName"))
        if grantee_name is None and name == "CreateAccessKey":
            grantee = actor  # no userName: AWS creates the key for the caller
        elif grantee_name is None:
            raise BadEvent("missing_field", f"{name} names no {kind}")
        else:
            grantee = f"arn:aws:iam::{account}:{kind}/{grantee_name}"
        session = identity.get("sessionContext")
        issuer = session.get("sessionIssuer") if isinstance(session, dict) else None
        if isinstance(issuer, dict) and as_str(issuer.get("arn")) == grantee:
            grantee = actor  # a role session granting to its own role
        policy_arn = as_str(params.get("policyArn"))
        if policy_arn is not None:
            resource = "role:policy/" + policy_arn.rpartition("/")[2]
        elif name in ("PutUserPolicy", "PutRolePolicy"):
            resource = "role:inline-policy/" + (as_str(params.get("policyName")) or "unknown")
        elif name == "AddUserToGroup":
            resource = "role:group/" + (as_str(params.get("groupName")) or "unknown")
        else:
            resource = "role:access-key"
        attrs = {**common["attributes"], "grantee": grantee}
        if policy_arn is not None:
            attrs["policy_arn"] = policy_arn
        return "audit", {**common, "actor": actor, "action": action, "resource": resource,
                         "resource_type": "role", "attributes": attrs}

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {"skipped": self.skipped}
