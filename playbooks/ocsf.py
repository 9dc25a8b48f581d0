"""Findings as OCSF 1.8.0 Detection Findings (class_uid 2004), for SIEMs.

A pure function: :func:`to_ocsf` maps one finding to one OCSF event, a dict
ready for JSON. ``activity`` is ``create`` for a new incident (type_uid
200401) and ``update`` for a repeat of one (200402); by default it follows the
finding: an incident update (``finding.incident.seq > 1``, see
:mod:`detectors.incidents`) is an ``update``, anything else a ``create``.
``close`` (200403) is the playbook's "resolved". What leaves is the same
outside view that chat and webhooks get (:func:`playbooks.outside.outside_view`):
principals and IPs pseudonymised when a pseudonymizer is given, the summary
masked alike, evidence reduced to statistics (no feature values, payloads or
identities), ATLAS ids checked.

- ``finding_info.uid`` is the finding id; ``finding_info.attacks[]`` carries
  the ATLAS techniques (``AML.T0024``) and sub-techniques (``AML.T0024.002``);
- ``severity_id`` maps info..critical to 1..5; ``time`` is the finding's event
  time in milliseconds;
- ``metadata.product`` names mlwatchd and its version, ``metadata.version`` the
  OCSF version;
- ``evidences[0]`` holds the statistics (``data``) and the entity (``user``,
  ``src_endpoint`` or a resource); ``resources[]`` the model concerned;
- an incident's first and last times and count go to ``finding_info``
  (``first_seen_time``, ``last_seen_time``) and ``count``; its id, which is the
  id of its first finding, to ``unmapped.mlwatchd.incident``.

:func:`ocsf_records` gives the Kafka records of a batch's findings for the
OCSF topic (``topics.ocsf``): the daemon sends them in the same acknowledged
batch as the findings, so they are at least once like the findings.

>>> from detectors.findings import Entity, Finding, Source
>>> f = Finding.build(detector="extraction.prada", kind="model_extraction",
...     severity="high", entity=Entity("principal", "mallory"), model_id="fraud",
...     summary="mallory probes fraud", evidence={"ratio": 0.91, "features": [3.2]},
...     atlas=["AML.T0024.002"], event_ts=1767225600.0, sources=[Source("t", 0, 7)])
>>> event = to_ocsf(f, activity="create", product_version="1.2.3")
>>> event["type_uid"], event["severity_id"], event["time"]
(200401, 4, 1767225600000)
>>> event["finding_info"]["uid"] == f.finding_id
True
>>> event["finding_info"]["attacks"]
[{'technique': {'uid': 'AML.T0024'}, 'sub_technique': {'uid': 'AML.T0024.002'}}]
>>> event["evidences"][0]["data"], event["evidences"][0]["user"]
({'ratio': 0.91}, {'uid': 'mallory', 'type_id': 0})
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import metadata as _metadata
from typing import Any, Final, Literal, TypeAlias

import msgspec

from detectors.events import parse_ts
from detectors.findings import Finding
from playbooks.outside import outside_view

from .privacy import Pseudonymizer

__all__ = ["OCSF_VERSION", "Activity", "OcsfRecord", "ocsf_records", "to_ocsf"]

Activity: TypeAlias = Literal["create", "update", "close"]
#: (topic, key, value, headers): the shape of the daemon's output records.
OcsfRecord: TypeAlias = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]

OCSF_VERSION: Final = "1.8.0"
_CLASS_UID: Final = 2004
_CATEGORY_UID: Final = 2
_ACTIVITY: Final = {"create": (1, "Create"), "update": (2, "Update"), "close": (3, "Close")}
_STATUS: Final = {"new": (1, "New"), "in_progress": (2, "In Progress"), "resolved": (4, "Resolved")}
_HEADERS: Final = [("content-type", b"application/json"),
                   ("ocsf-class-uid", str(2004).encode())]
_SEVERITY: Final = {
    "info": (1, "Informational"), "low": (2, "Low"), "medium": (3, "Medium"),
    "high": (4, "High"), "critical": (5, "Critical"),
}
#: OCSF analytic type_id: 2 Behavioral (who does what), 3 Statistical (distributions)
_BEHAVIOURAL_KINDS: Final = frozenset(
    {"suspicious_access", "exfiltration", "data_poisoning", "model_tampering"}
)


@functools.cache
def _product_version() -> str:
    try:
        return _metadata.version("mlwatchd")
    except _metadata.PackageNotFoundError:
        return "0+unknown"


def _millis(rfc3339: str) -> int:
    return round(parse_ts(rfc3339) * 1000)


def _attack(atlas_id: str) -> dict[str, Any]:
    technique, _, sub = atlas_id.partition(".")[2].partition(".")
    parent = "AML." + technique
    if sub:
        return {"technique": {"uid": parent}, "sub_technique": {"uid": atlas_id}}
    return {"technique": {"uid": atlas_id}}


def to_ocsf(
    finding: Finding,
    *,
    activity: Activity | None = None,
    pseudonymizer: Pseudonymizer | None = None,
    product_version: str | None = None,
    status: Literal["new", "in_progress", "resolved"] | None = None,
) -> dict[str, Any]:
    """The OCSF Detection Finding for ``finding`` (a JSON-ready dict).

    ``activity`` None: ``update`` for an incident update, else ``create``.
    ``status`` None: ``new`` for a create, ``resolved`` for a close, none for an update.
    """
    if activity is None:
        activity = "update" if finding.is_update else "create"
    if status is None:
        status = {"create": "new", "close": "resolved"}.get(activity)  # type: ignore[assignment]
    view = outside_view(finding, pseudonymizer)
    activity_id, activity_name = _ACTIVITY[activity]
    severity_id, severity = _SEVERITY[finding.severity]
    time = _millis(finding.ts)
    entity_type, entity_id = view["entity.type"], view["entity.id"]
    evidence: dict[str, Any] = {"data": view["evidence"]}
    if entity_type == "principal":
        evidence["user"] = {"uid": entity_id, "type_id": 0}
    elif entity_type == "ip":
        key = "uid" if pseudonymizer is not None else "ip"  # a pseudonym is no address
        evidence["src_endpoint"] = {key: entity_id}
    else:
        evidence["resources"] = [{"uid": entity_id, "type": entity_type}]
    resources = []
    if view["model_id"]:
        resources.append({"uid": view["model_id"], "name": view["model_id"], "type": "model"})
    event: dict[str, Any] = {
        "activity_id": activity_id,
        "activity_name": activity_name,
        "category_uid": _CATEGORY_UID,
        "category_name": "Findings",
        "class_uid": _CLASS_UID,
        "class_name": "Detection Finding",
        "type_uid": _CLASS_UID * 100 + activity_id,
        "type_name": f"Detection Finding: {activity_name}",
        "severity_id": severity_id,
        "severity": severity,
        "time": time,
        "message": view["summary"],
        "is_alert": activity == "create",
        "metadata": {
            "version": OCSF_VERSION,
            "product": {
                "name": "mlwatchd",
                "vendor_name": "mlwatchd",
                "version": product_version or _product_version(),
                "feature": {"name": finding.detector},
            },
            "log_name": "findings",
        },
        "finding_info": {
            "uid": finding.finding_id,
            "title": f"{finding.kind.replace('_', ' ')} ({finding.detector})",
            "desc": view["summary"],
            "types": [finding.kind],
            "analytic": {
                "uid": finding.detector,
                "name": finding.detector,
                "type_id": 2 if finding.kind in _BEHAVIOURAL_KINDS else 3,
            },
            "attacks": [_attack(a) for a in view["atlas"]],
            "created_time": time,
        },
        "evidences": [evidence],
        "unmapped": {"mlwatchd": {"kind": finding.kind, "entity_type": entity_type}},
    }
    if status is not None:
        event["status_id"], event["status"] = _STATUS[status]
    if resources:
        event["resources"] = resources
    incident = finding.incident
    if incident is not None:
        info = event["finding_info"]
        info["first_seen_time"] = _millis(incident.first_ts)
        info["last_seen_time"] = _millis(incident.last_ts)
        event["count"] = incident.count
        event["unmapped"]["mlwatchd"]["incident"] = {
            "id": incident.id, "seq": incident.seq, "count": incident.count,
            "max_severity": incident.max_severity, "escalated": incident.escalated}
    return event


def ocsf_records(
    findings: Iterable[Finding], topic: str, *, product_version: str | None = None
) -> list[OcsfRecord]:
    """One OCSF record per finding for ``topic`` (none when ``topic`` is empty: off).

    Keyed like the findings topic (by entity id), so one entity's findings
    stay in order. Real ids, like the findings topic this mirrors (the
    evidence is reduced to statistics all the same); pseudonymised copies
    for a SIEM outside the team go through the playbook action ``ocsf``.
    """
    if not topic:
        return []
    version = product_version or _product_version()
    return [(topic, f.entity.id.encode(),
             msgspec.json.encode(to_ocsf(f, product_version=version)), list(_HEADERS))
            for f in findings]
