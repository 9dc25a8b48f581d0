"""Inference-abuse detectors against real attack traffic (IBM ART) and benign callers.

Attack streams come from ``traffic.py``: HopSkipJump and BoundaryAttack run by
ART against a digits model, Jacobian-based (synthetic) extraction and a
natural-data knockoff thief; every query they make is an inference event.
Benign traffic: 40 principals scoring held-out digits over about four hours.
Each test states in its name the number of attacker queries within which the
attack must be found.
"""

from __future__ import annotations

import math
import warnings

import msgspec
import numpy as np
import pytest
import traffic as T

from detectors.abuse import DETECTORS
from detectors.abuse.blacklight import BlacklightProbingDetector
from detectors.abuse.coverage import CoverageExtractionDetector
from detectors.abuse.knn import StatefulKnnProbingDetector
from detectors.abuse.low_confidence import LowConfidenceProbingDetector
from detectors.abuse.prada import PradaExtractionDetector
from detectors.abuse.volume import PeerRateDetector, PrincipalRateDetector
from detectors.events import InferenceEvent
from detectors.findings import Finding
from detectors.testing import sourced

ATTACKERS = {"attacker-hsj", "attacker-boundary", "thief-jbda", "thief-knockoff"}
ATLAS = {
    "model_extraction": {"AML.T0024.002", "AML.T0005.001", "AML.T0040"},
    "adversarial_probing": {"AML.T0043.001", "AML.T0015", "AML.T0042"},
    "denial_of_service": {"AML.T0029", "AML.T0034"},
}


@pytest.fixture(scope="module")
def streams() -> dict[str, list[InferenceEvent]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "benign": T.benign_events(),
            "hsj": T.hopskipjump_events(t0=T.T0 + 3600),
            "boundary": T.boundary_events(t0=T.T0 + 5400),
            "jbda": T.jbda_events(t0=T.T0 + 1800),
            "knockoff": T.knockoff_events(t0=T.T0 + 1200)[0],
        }
    out["all"] = T.interleave(*out.values())
    return out


def run(detector, events) -> list[tuple[Finding, int]]:
    """Findings with the number of queries their principal had sent at that point."""
    sent: dict[str, int] = {}
    out = []
    for event, source in sourced(events):
        sent[event.principal] = sent.get(event.principal, 0) + 1
        for finding in detector.process(event, source) or ():
            out.append((finding, sent[event.principal]))
    return out


def first_alarm(found, principal: str) -> float:
    return min((n for f, n in found if f.entity.id == principal), default=math.inf)


@pytest.fixture(scope="module")
def findings(streams) -> dict[str, list[tuple[Finding, int]]]:
    return {cls.name: run(cls(), streams["all"]) for cls in DETECTORS}


@pytest.mark.parametrize("name", [cls.name for cls in DETECTORS])
def test_benign_principals_produce_no_finding(findings, name):
    wrong = [(f.entity.id, f.summary) for f, _ in findings[name] if f.entity.id not in ATTACKERS]
    assert wrong == [], f"{name} fired on benign principals"


@pytest.mark.parametrize(
    ("name", "attacker", "within"),
    [
        # The ART attacks send some exact repeats, which the distance detectors
        # skip (a repeat is no probe): their counts include one such repeat.
        ("probing.stateful_knn", "attacker-hsj", 80),
        ("probing.blacklight", "attacker-hsj", 64),
        ("probing.low_confidence", "attacker-hsj", 64),
        ("probing.stateful_knn", "attacker-boundary", 65),
        ("probing.blacklight", "attacker-boundary", 64),
        ("extraction.prada", "attacker-boundary", 256),
        ("probing.low_confidence", "attacker-boundary", 500),
    ],
)
def test_art_attack_found_within_stated_queries(findings, name, attacker, within):
    assert first_alarm(findings[name], attacker) <= within, (
        f"{name} must find {attacker} within {within} of its queries"
    )


def test_prada_does_not_judge_hsj_before_the_model_is_calibrated(findings):
    # HopSkipJump runs one hour into a new deployment, when only two of the
    # model's callers have been tested: PRADA has no calibrated bar and abstains
    # (tests/abuse/test_prada_cold_start.py); the probing detectors above find it.
    # BoundaryAttack, later, is judged against calibrated peers.
    assert first_alarm(findings["extraction.prada"], "attacker-hsj") == math.inf
    found = [f for f, _ in findings["extraction.prada"] if f.entity.id == "attacker-boundary"]
    assert found and found[0].evidence["calibrated"]


def test_knockoff_thief_as_varied_as_benign_callers_is_no_breadth_finding(findings):
    # Issue #14: breadth at matched volume. The thief's natural digits cover no
    # more cells than the benign callers' after as many queries; against the
    # lighter callers' totals (found after ~600) every heavy caller was reported.
    assert first_alarm(findings["extraction.coverage"], "thief-knockoff") == math.inf


def test_fast_knockoff_thief_found_by_peer_rate_within_64_queries(findings):
    assert first_alarm(findings["volume.peer_rate"], "thief-knockoff") <= 64


def test_jacobian_extraction_found_by_the_family_within_300_queries(findings):
    # PRADA alone misses this Jacobian-augmentation run on digits (W ~0.96 against
    # >= 0.97 for benign callers); Blacklight (its perturbed copies share
    # fingerprints with their parents) and its volume give it away.
    first = min(first_alarm(found, "thief-jbda") for found in findings.values())
    assert first <= 300
    assert first_alarm(findings["probing.blacklight"], "thief-jbda") <= 300


def test_slow_knockoff_thief_evades_rate_and_breadth(streams):
    # Six queries a minute, like a busy benign caller: no rate alarm, and its
    # breadth at matched volume is a benign caller's (the limit of issue #14:
    # found before only by out-covering lighter callers, as heavy benign ones do).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow, _ = T.knockoff_events(t0=T.T0 + 600, n_queries=900, gap=10.0)
    events = T.interleave(streams["benign"], slow)
    assert first_alarm(run(PeerRateDetector(), events), "thief-knockoff") == math.inf
    assert first_alarm(run(CoverageExtractionDetector(), events), "thief-knockoff") == math.inf


def _tabular(seed: int, principals: int = 40, per: int = 500, sweep: int = 0):
    """A tabular model's traffic (8 standard-normal features), busy benign callers,
    and optionally a partner sweeping the input box [-4, 4]^8 at one query a second."""
    rng = np.random.default_rng(seed)
    events = []
    for p in range(principals):
        ts = np.sort(rng.uniform(0, 86_400, per))
        for i, x in enumerate(rng.normal(size=(per, 8))):
            events.append((ts[i], f"app-{p}", x))
    for i, x in enumerate(rng.uniform(-4, 4, (sweep, 8))):
        events.append((40_000 + i, "partner-sweep", x))
    events.sort(key=lambda e: e[0])
    return [
        InferenceEvent(ts=T.T0 + t, model_id="fraud", request_id=f"r{n}", principal=who,
                       features=x.tolist(), prediction=int(x[0] > 0))
        for n, (t, who, x) in enumerate(events)
    ]


@pytest.mark.parametrize("seed", [0, 1])
def test_uniform_sweep_of_a_tabular_model_found_by_coverage_novelty_within_128_queries(seed):
    # Benign callers send 500 queries each, the sweep 1,000 at 1/s: breadth
    # (distinct fine cells) cannot tell them apart, novelty does.
    found = run(CoverageExtractionDetector(), _tabular(seed, sweep=1000))
    assert {f.entity.id for f, _ in found} == {"partner-sweep"}
    finding, n = found[0]
    assert n <= 128 and finding.kind == "model_extraction"
    assert finding.evidence["observed_share"] > finding.evidence["baseline_share"]


def test_busy_tabular_callers_produce_no_coverage_finding():
    assert run(CoverageExtractionDetector(), _tabular(2, per=800)) == []


def test_one_finding_per_incident(findings):
    for name, found in findings.items():
        per_principal: dict[str, int] = {}
        for f, _ in found:
            per_principal[f.entity.id] = per_principal.get(f.entity.id, 0) + 1
        assert all(n <= 2 for n in per_principal.values()), (name, per_principal)


def test_findings_state_examined_queries_threshold_and_atlas(findings):
    for name, found in findings.items():
        for f, _ in found:
            assert f.entity.type == "principal" and f.model_id == T.MODEL
            assert set(f.atlas) >= ATLAS[f.kind] - {"AML.T0040"}, (name, f.atlas)
            ev = f.evidence
            assert ev.get("queries_examined", 0) > 0, name
            assert any("threshold" in k or k == "critical_count" for k in ev), (name, ev)
            flat = msgspec.json.encode(ev)
            assert len(flat) < 1500, f"{name}: evidence must be statistics, not payloads"


def test_sybil_hopskipjump_split_over_four_accounts_is_linked_by_blacklight(streams):
    accounts = [f"sybil-{i}" for i in range(4)]
    split = [
        msgspec.structs.replace(e, principal=accounts[i % 4]) for i, e in enumerate(streams["hsj"])
    ]
    found = run(BlacklightProbingDetector(), T.interleave(streams["benign"], split))
    flagged = {f.entity.id: f for f, n in found if n <= 48}
    assert set(flagged) == set(accounts), "each account found within 48 of its queries"
    # The first account found may be found on its own batch, before the others'
    # queries reach the index; the findings together link all four.
    links = {(a, b) for a, f in flagged.items() for b in f.evidence["other_principals_matched"]}
    linked = {accounts[0]}
    for _ in accounts:
        linked |= {b for a, b in links if a in linked} | {a for a, b in links if b in linked}
    assert linked == set(accounts)


def test_dict_features_with_categories_and_missing_values_still_work(streams):
    def as_dict(e: InferenceEvent) -> InferenceEvent:
        feats = {f"px{i}": v for i, v in enumerate(e.features)}
        feats["channel"] = "web" if len(e.request_id) % 2 else "app"
        feats["px0"] = None
        return msgspec.structs.replace(e, features=feats)

    events = [as_dict(e) for e in T.interleave(streams["benign"], streams["hsj"])]
    found = run(StatefulKnnProbingDetector(), events)
    assert {f.entity.id for f, _ in found} == {"attacker-hsj"}
    assert first_alarm(found, "attacker-hsj") <= 65  # 64 and one skipped exact repeat


@pytest.mark.parametrize("cls", DETECTORS, ids=lambda c: c.name)
def test_flood_of_new_principal_ids_is_bounded_and_counted(cls, streams):
    detector = cls(max_principals=100)
    calm = streams["benign"][:400]
    run(detector, calm)
    flood = [
        msgspec.structs.replace(e, principal=f"bot-{i}", ts=e.ts + 30_000)
        for i, e in enumerate(streams["benign"][400:2400])
    ]
    run(detector, flood)
    stats = detector.stats()
    assert stats["entities"] <= 100
    assert stats["evicted_total"] >= 1500


def test_history_stays_bounded_for_a_long_running_principal():
    one = T.QueryLog("heavy", gap=0.5)
    v = T.victim()
    for _ in range(6):
        one(T._shifted(v.benign_pool, 500, __import__("numpy").random.default_rng(len(one.events))))
    knn = StatefulKnnProbingDetector(buffer_size=128, calibration_rows=64)
    prada = PradaExtractionDetector(max_growing=64, max_distances=200, calibration_rows=64)
    blacklight = BlacklightProbingDetector(max_index=5000, calibration_rows=64)
    coverage = CoverageExtractionDetector(sketch_k=64, calibration_rows=64)
    for det in (knn, prada, blacklight, coverage):
        run(det, one.events)
    key = f"heavy\x1f{T.MODEL}"
    assert len(knn.table.get(key).buffer) == 128
    assert len(prada.table.get(key).g_rows) == 64 and len(prada.table.get(key).dists) == 200
    assert all(len(i.keys) == 8192 and i.filled <= 8192 for _, i in blacklight.indexes.items())
    assert len(coverage.table.get(key).kmv) <= 64


def test_own_history_rate_detector_keeps_its_configured_name_and_params():
    det = PrincipalRateDetector(
        bucket_seconds=60,
        z_threshold=6.0,
        min_ratio=5.0,
        min_count=50,
        warmup_buckets=10,
        max_principals=200000,
    )
    assert det.name == "volume.principal_rate"


def test_low_confidence_needs_a_warm_baseline():
    det = LowConfidenceProbingDetector(warmup_events=500)
    events = [
        InferenceEvent(
            ts=float(i),
            model_id="m",
            request_id=str(i),
            principal="early",
            features=[0.0],
            prediction=0,
            confidence=0.3,
        )
        for i in range(300)
    ]
    assert run(det, events) == []


def test_calibrated_probing_rules_find_late_art_attacks_within_32_queries(streams):
    # In the fixture the kNN rule is calibrated only after ~2.4 h (it samples
    # queries judged against a full buffer of 128), so the attacks above meet
    # the pre-calibration rule; here they come after calibration.
    late = [
        msgspec.structs.replace(e, ts=e.ts + 12_000)
        for e in streams["hsj"] + streams["boundary"]
    ]
    events = T.interleave(streams["benign"], late)
    for det in (StatefulKnnProbingDetector(), BlacklightProbingDetector()):
        found = run(det, events)
        assert {f.entity.id for f, _ in found} == {"attacker-hsj", "attacker-boundary"}
        assert all(f.evidence["calibrated"] for f, _ in found), det.name
        # 32 queries, and one exact repeat the detectors skip
        assert first_alarm(found, "attacker-hsj") <= 33, det.name
        assert first_alarm(found, "attacker-boundary") <= 33, det.name
