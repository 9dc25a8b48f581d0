"""The simulated timeline and its labelled attack scenarios (ground truth).

Shared by :mod:`daemon.lab.simulate` (benign traffic and scripted attacks),
:mod:`daemon.lab.attacks` (attacks driven by IBM ART) and
:mod:`daemon.lab.evaluate` (scoring), so that none of them imports another
only for these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["ALL_SCENARIOS", "ART_SCENARIOS", "DAY", "HOUR", "SCENARIOS", "T0", "Scenario",
           "SimEvent"]

#: Monday 2 November 2026, 00:00 UTC.
T0: Final = 1_793_577_600.0
DAY: Final = 86_400.0
HOUR: Final = 3_600.0


@dataclass(frozen=True)
class SimEvent:
    """One generated event; ``scenario`` is None for benign traffic."""

    ts: float
    kind: str  # inference | audit | access
    key: str
    body: dict[str, Any]
    scenario: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    entity_type: str
    entity_id: str
    kinds: tuple[str, ...]  # finding kinds that count as detecting it
    start_offset_s: float   # from the start of the attack day


#: Attack day = the last simulated day; offsets from its midnight (UTC).
SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("exfiltration", "contractor bulk-downloads 40 datasets at 03:00",
             "principal", "contractor-7", ("exfiltration",), 3 * HOUR),
    Scenario("impossible_travel", "dana logs in from Berlin, then Sao Paulo 30 min later",
             "principal", "dana.r", ("suspicious_access",), 8 * HOUR),
    Scenario("query_flood", "a regular API caller sends 2,500 queries in 3 minutes",
             "principal", "app-scraper", ("denial_of_service",), 10 * HOUR),
    Scenario("model_extraction", "a partner sweeps the input space with 5,000 synthetic queries",
             "principal", "partner-acme", ("model_extraction",), 11 * HOUR),
    Scenario("adversarial_probing", "boundary-search queries: near-duplicates, low margin",
             "principal", "eve-research", ("adversarial_probing",), 12 * HOUR),
    Scenario("brute_force", "30 failed logins for admin-ops from one IP, then success",
             "principal", "admin-ops", ("suspicious_access",), 13 * HOUR),
    Scenario("input_drift", "churn model inputs shift from 14:00; confidence collapses",
             "model", "churn", ("drift", "confidence_drop", "performance_drop",
                                "input_integrity"), 14 * HOUR),
    Scenario("self_grant", "svc-etl grants itself the admin role",
             "principal", "svc-etl", ("suspicious_access",), 15 * HOUR),
    Scenario("training_write", "an intern writes 200k rows into the training set",
             "principal", "intern-3", ("data_poisoning",), 16 * HOUR),
    Scenario("model_tampering", "a developer overwrites a registered model outside a pipeline",
             "principal", "dev-x", ("model_tampering", "data_poisoning"), 17 * HOUR),
)

#: Scenarios driven by real attack code (``--art``, :mod:`daemon.lab.attacks`), same day.
ART_SCENARIOS: Final[tuple[Scenario, ...]] = (
    Scenario("art_hopskipjump", "HopSkipJump (IBM ART) evasion queries against digits-lr",
             "principal", "mallory-hsj", ("adversarial_probing",), 18 * HOUR),
    Scenario("art_boundary", "BoundaryAttack (IBM ART) evasion queries against digits-lr",
             "principal", "mallory-boundary", ("adversarial_probing",), 19 * HOUR),
    Scenario("art_knockoff", "knockoff thief: 2,000 natural digits at one a second",
             "principal", "thief-knockoff", ("model_extraction",), 20 * HOUR),
)

#: Every scenario a simulated stream may be labelled with, by name.
ALL_SCENARIOS: Final[dict[str, Scenario]] = {s.name: s for s in SCENARIOS + ART_SCENARIOS}
