"""Findings of :class:`~detectors.access.exfiltration.ExfiltrationDetector`: summary, evidence.

One builder per rule: a window total above its limits (:func:`volume_finding`)
and a low and slow day (:func:`slow_finding`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from detectors.access.audit_fields import model_id_of
from detectors.access.exfiltration_state import METRICS, ReadWindow
from detectors.events import AuditEvent
from detectors.findings import Entity, Finding, Severity, Source

__all__ = ["PeerView", "slow_finding", "volume_finding"]

_ATLAS_EXFIL: Final = ["AML.T0025"]
_ATLAS_MODEL_EXFIL: Final = ["AML.T0025", "AML.T0035"]
_WHAT: Final = {
    "bytes": "bytes read",
    "records": "records read",
    "datasets": "distinct datasets read",
    "models": "distinct model versions downloaded",
}


@dataclass(frozen=True, slots=True)
class PeerView:
    """What the peer population says of one metric when a finding is made."""

    quantile: float  # which quantile (0.99: what 1 in 100 active windows reaches)
    value: float  # the population's value at that quantile now
    floor: float  # the quantile the limits were derived from
    limit: float  # what a principal with no history must exceed
    factor: float  # limit / floor for a principal with no history


def slow_finding(
    detector: str, event: AuditEvent, source: Source, st: ReadWindow, ts: float
) -> Finding:
    """A day's reads far above the usual day, across datasets never read before."""
    usual = st.day_base.usual(0)
    new = len(st.day_new)
    return Finding.build(
        detector=detector,
        kind="exfiltration",
        severity="medium",
        entity=Entity("principal", event.actor),
        model_id=None,
        summary=(
            f"Principal {event.actor} read {st.day_bytes:,} bytes today, "
            f"{st.day_bytes / max(usual, 1.0):.1f}x its usual day of {usual:,.0f}, "
            f"across {new} datasets it never read before (it had read "
            f"{len(st.known_datasets)})."
        ),
        evidence={
            "rule": "low_and_slow",
            "metric": "daily_bytes",
            "observed": st.day_bytes,
            "day_start": st.day * 86400,
            "baseline_usual": round(usual, 3),
            "baseline_days": st.days,
            "threshold": round(st.day_limits[0], 3),
            "ratio_to_usual": round(st.day_bytes / max(usual, 1.0), 2),
            "never_read_datasets": new,
            "never_read_threshold": st.day_limits[1],
            "known_breadth": len(st.known_datasets),
            "last_resource": event.resource,
        },
        atlas=_ATLAS_EXFIL,
        event_ts=ts,
        sources=[source],
        id_key=f"day:{st.day}",
    )


def volume_finding(
    detector: str,
    event: AuditEvent,
    source: Source,
    st: ReadWindow,
    i: int,
    *,
    warm: bool,
    own_min_windows: int,
    window_seconds: float,
    peer: PeerView,
    ts: float,
) -> Finding:
    """Window total ``i`` (of :data:`METRICS`) above the limits of ``st``."""
    metric = METRICS[i]
    observed = st.totals[i]
    usual = st.base.usual(i)
    above_peers = observed > peer.limit
    ratio = observed / max(usual, 1.0)
    severity: Severity = "high" if above_peers and (not warm or ratio >= 50) else "medium"
    p = f"p{peer.quantile * 100:g}"
    if warm:
        versus = f"{ratio:.0f}x its usual {usual:,.0f} per active window"
    elif st.windows >= own_min_windows:
        versus = (
            f"{ratio:.0f}x its usual {usual:,.0f} over its first {st.windows} active "
            f"windows, and above the peers' {p} of {peer.value:,.0f}"
        )
    else:
        versus = (
            f"with no history of its own, above {peer.factor:g}x "
            f"the peers' {p} of {peer.value:,.0f}"
        )
    return Finding.build(
        detector=detector,
        kind="exfiltration",
        severity=severity,
        entity=Entity("principal", event.actor),
        model_id=model_id_of(event.resource) if i == 3 else None,
        summary=(
            f"Principal {event.actor} reached {observed:,} {_WHAT[metric]} within "
            f"{window_seconds / 3600:g}h, {versus}."
        ),
        evidence={
            "metric": metric,
            "observed": observed,
            "window_seconds": window_seconds,
            "window_start": st.window * window_seconds,
            "baseline_usual": round(usual, 3),
            "baseline_spread_log": round(st.base.sd(i), 4),
            "baseline_windows": st.windows,
            "threshold": round(st.judge[i], 3),
            "own_threshold": round(st.limits[i], 3),
            "population_floor": peer.floor,
            "known_breadth": len(st.known_models if i == 3 else st.known_datasets),
            "ratio_to_usual": round(ratio, 2),
            "peer_quantile": peer.quantile,
            "peer_value": peer.value,
            "above_peers": above_peers,
            "totals": dict(zip(METRICS, st.totals, strict=True)),
            "last_resource": event.resource,
        },
        atlas=_ATLAS_MODEL_EXFIL if i == 3 else _ATLAS_EXFIL,
        event_ts=ts,
        sources=[source],
        id_key=f"window:{st.window}",
    )
