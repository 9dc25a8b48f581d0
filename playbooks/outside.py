"""The outside view of a finding: template variables for destinations outside
the security team (webhooks, the OCSF SIEM feed, PagerDuty, Slack link-outs).

It applies the same masking as the Slack message (:mod:`playbooks.render`):
pseudonyms when enabled, a capped summary, statistics-only evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detectors.findings import Finding
from playbooks.privacy import Pseudonymizer, is_identity_key
from playbooks.render import (
    ATLAS_ID,
    EVIDENCE_MAX,
    KEY_MAX,
    LIST_MAX,
    STRING_MAX,
    SUMMARY_MAX,
    cap,
    is_number,
    is_raw_key,
    private_view,
)

__all__ = ["outside_view"]


def outside_view(
    finding: Finding, pseudonymizer: Pseudonymizer | None = None
) -> dict[str, Any]:
    """Template variables of ``finding`` for destinations outside the security team.

    Principals and IPs are pseudonyms (when a pseudonymizer is given), the
    summary is masked the same way, and ``evidence`` keeps statistics only:
    top-level numbers and name -> number maps under non-raw keys, capped.

    >>> from detectors.findings import Entity, Finding, Source
    >>> f = Finding.build(detector="d", kind="drift", severity="low",
    ...     entity=Entity("model", "m"), model_id="m", summary="s",
    ...     evidence={"psi": 0.3, "features": [1, 2], "payload": "x", "top": {"a": 1}},
    ...     atlas=[], event_ts=0.0, sources=[Source("t", 0, 1)])
    >>> outside_view(f)["evidence"]
    {'psi': 0.3, 'top': {'a': 1}}
    """
    finding = private_view(finding, pseudonymizer)
    entity = finding.entity
    evidence: dict[str, Any] = {}
    for key, value in finding.evidence.items():
        if len(evidence) >= EVIDENCE_MAX:
            break
        key = str(key)
        if is_raw_key(key) or is_identity_key(key):
            continue
        if is_number(value) and not isinstance(value, bool):
            evidence[cap(key, KEY_MAX)] = value
        elif isinstance(value, Mapping):
            numeric = {
                cap(str(k), KEY_MAX): v
                for k, v in list(value.items())[:LIST_MAX]
                if is_number(v) and not isinstance(v, bool)
                and (len(str(k)) <= STRING_MAX)
            }
            if numeric:
                evidence[cap(key, KEY_MAX)] = numeric
    return {
        "finding_id": finding.finding_id,
        "ts": finding.ts,
        "detector": finding.detector,
        "kind": finding.kind,
        "severity": finding.severity,
        "summary": cap(finding.summary, SUMMARY_MAX),
        "entity.type": entity.type,
        "entity.id": entity.id,
        "model_id": finding.model_id or "",
        "atlas": [a for a in finding.atlas if ATLAS_ID.fullmatch(a)],
        "evidence": evidence,
    }
