"""Telemetry family: known drift points found within a stated delay, stationary streams silent.

Delays are counted in events of the drifting model after the drift point, from
the triggering source offset of the first finding.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from telemetry_streams import event, from_model, stationary

from detectors.findings import encode_finding
from detectors.telemetry import (
    ConfidenceDropDetector,
    FeatureDriftDetector,
    InputIntegrityDetector,
    PerformanceEstimateDetector,
    PredictionDriftDetector,
)
from detectors.testing import feed


def delay(findings, drift_at: int) -> int:
    assert findings, "no finding"
    return findings[0].sources[0].offset - drift_at


# -- stationary ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_stationary():
    return stationary(200_000, seed=11)


def test_stationary_200k_events_no_finding_from_any_detector(long_stationary):
    family = [
        FeatureDriftDetector(),
        PredictionDriftDetector(),
        ConfidenceDropDetector(),
        PerformanceEstimateDetector(),
        InputIntegrityDetector(),
    ]
    for det in family:
        assert feed(det, long_stationary) == [], det.name
        stats = det.stats()
        assert stats["models_with_reference"] == 2, det.name  # silence is not vacuous


# -- feature drift -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cancer():
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return x, y


def _resample(x, n, seed):
    rng = np.random.default_rng(seed)
    rows = x[rng.integers(0, len(x), size=n)]
    return rows * rng.normal(1.0, 0.02, size=rows.shape)  # jitter: no exact repeats


def test_feature_mean_shift_found_within_500_events_and_names_the_feature(cancer):
    x, _ = cancer
    rows = _resample(x, 12_000, seed=1)
    drift_at = 8_000
    rows[drift_at:, 3] += 0.7 * x[:, 3].std()  # "mean area" shifts by 0.7 sd
    events = [event(i, r.tolist(), 0, principal=f"user-{i % 13}") for i, r in enumerate(rows)]
    found = feed(FeatureDriftDetector(), events)
    assert len(found) == 1, "one incident, one finding"
    assert 0 <= delay(found, drift_at) <= 500
    ev = found[0].evidence
    assert ev["top_features"][0]["feature"] == "f3"
    assert ev["attribution"]["scope"] == "population"
    assert found[0].atlas == []


def test_one_caller_shifting_inputs_is_attributed_to_that_caller_within_1000_events(cancer):
    x, _ = cancer
    rows = _resample(x, 12_000, seed=2)
    drift_at = 8_000
    who = [f"user-{i % 9}" for i in range(len(rows))]
    for i in range(drift_at, len(rows)):
        if i % 5 == 0:
            who[i] = "mallory"
            rows[i, 7] = rows[i, 7] + 3 * x[:, 7].std()
    events = [event(i, r.tolist(), 0, principal=who[i]) for i, r in enumerate(rows)]
    found = feed(FeatureDriftDetector(), events)
    assert 0 <= delay(found, drift_at) <= 1000
    attribution = found[0].evidence["attribution"]
    assert attribution["scope"] == "single_principal" and attribution["principal"] == "mallory"
    assert found[0].severity == "high" and "AML.T0015" in found[0].atlas


def test_feature_that_stops_arriving_is_drift_within_500_events():
    rng = np.random.default_rng(3)
    events = []
    for i in range(9_000):
        feats = {
            "amount": float(rng.gamma(2.0)),
            "country": rng.choice(["DE", "FR", "US"]),
            "age": float(rng.normal(40, 9)),
        }
        if i >= 6_000:
            feats["age"] = None  # upstream join broke
        events.append(event(i, feats, 0))
    found = feed(FeatureDriftDetector(), events)
    assert 0 <= delay(found, 6_000) <= 500
    top = found[0].evidence["top_features"][0]
    assert top["feature"] == "age" and top["missing_share_window"] > 0.2


def test_correlation_break_found_by_multivariate_signal_not_marginals():
    rng = np.random.default_rng(4)
    n, drift_at = 12_000, 8_000
    z = rng.normal(size=n)
    a = z + 0.1 * rng.normal(size=n)
    b = z + 0.1 * rng.normal(size=n)
    b[drift_at:] = rng.permutation(b[drift_at:])  # same marginal, correlation gone
    events = [event(i, [float(a[i]), float(b[i])], 0) for i in range(n)]
    found = feed(FeatureDriftDetector(), events)
    assert 0 <= delay(found, drift_at) <= 500
    ev = found[0].evidence
    assert ev["features_drifting"] == 0
    assert ev["multivariate"]["observed"] > ev["multivariate"]["threshold"]


def test_small_but_real_shift_respects_per_model_override(cancer):
    x, _ = cancer
    rows = _resample(x, 10_000, seed=5)
    rows[6_000:, 0] += 0.6 * x[:, 0].std()
    events = [event(i, r.tolist(), 0) for i, r in enumerate(rows)]
    assert feed(FeatureDriftDetector(), events)
    strict = FeatureDriftDetector(overrides={"m": {"min_psi": 5.0}})
    assert feed(strict, events) == []
    with pytest.raises(ValueError, match="unknown"):
        FeatureDriftDetector(overrides={"m": {"min_pis": 0.2}})


# -- prediction drift ----------------------------------------------------------------


def test_concept_drift_stream_class_shift_found_within_750_events():
    from river.datasets import synth

    drift_at = 6_000
    stream = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=1),
        drift_stream=synth.Agrawal(classification_function=4, seed=1),
        position=drift_at,
        width=50,
        seed=1,
    )
    # The served model here answers with the generator's class (its labels shift 67% -> 20%).
    events = [event(i, x, int(y)) for i, (x, y) in enumerate(itertools.islice(stream, 9_000))]
    found = feed(PredictionDriftDetector(), events)
    assert len(found) == 1
    assert 0 <= delay(found, drift_at) <= 750
    assert found[0].evidence["output"] == "classes"
    assert feed(FeatureDriftDetector(), events) == [], "inputs did not change"


def test_regression_output_shift_found_within_750_events():
    rng = np.random.default_rng(6)
    y = rng.normal(100, 15, size=9_000)
    y[6_000:] += 10
    events = [event(i, [0.0], float(y[i])) for i in range(len(y))]
    found = feed(PredictionDriftDetector(), events)
    assert 0 <= delay(found, 6_000) <= 750
    assert found[0].evidence["output"] == "regression"


# -- confidence collapse through a real model ------------------------------------------


@pytest.fixture(scope="module")
def digits_stream():
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_digits(return_X_y=True)
    model = RandomForestClassifier(n_estimators=40, random_state=0).fit(x[::2], y[::2])
    rng = np.random.default_rng(7)
    idx = rng.integers(0, len(x) // 2, size=10_000) * 2 + 1  # held-out rows
    rows, truth = x[idx].copy(), y[idx]
    drift_at = 6_000
    noise = rng.normal(0, 5, size=rows[drift_at:].shape)
    rows[drift_at:] = np.clip(rows[drift_at:] + noise, 0, 16)  # sensor noise
    return from_model(model, rows, labels=truth, label_every=3), drift_at


def test_noisy_inputs_collapse_confidence_found_within_300_events(digits_stream):
    events, drift_at = digits_stream
    found = feed(ConfidenceDropDetector(), events)
    assert len(found) == 1
    assert 0 <= delay(found, drift_at) <= 300
    ev = found[0].evidence
    assert ev["observed_mean"] < ev["reference_mean"] - ev["threshold"]
    assert ev["mean_margin"] < ev["reference_margin"]


def test_noisy_inputs_drop_estimated_accuracy_found_within_300_events(digits_stream):
    events, drift_at = digits_stream
    unlabelled = [e for e in events]  # CBPE needs no label to estimate; labels calibrate it
    found = feed(PerformanceEstimateDetector(), unlabelled)
    assert len(found) == 1
    assert 0 <= delay(found, drift_at) <= 300
    ev = found[0].evidence
    assert ev["calibrated"] is True and ev["reference_labels"] >= 200
    assert ev["estimated_accuracy"] < ev["reference_estimated_accuracy"] - ev["threshold"]


def test_concept_drift_with_labels_found_by_measured_accuracy_within_1500_events():
    from river.datasets import synth
    from sklearn.tree import DecisionTreeClassifier

    train = list(itertools.islice(synth.Agrawal(classification_function=0, seed=3), 4_000))
    keys = list(train[0][0])
    model = DecisionTreeClassifier(max_depth=8, random_state=0).fit(
        [[x[k] for k in keys] for x, _ in train], [y for _, y in train]
    )
    drift_at = 6_000
    stream = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=4),
        drift_stream=synth.Agrawal(classification_function=2, seed=4),
        position=drift_at,
        width=50,
        seed=4,
    )
    data = list(itertools.islice(stream, 10_000))
    rows = np.array([[x[k] for k in keys] for x, _ in data])
    events = from_model(model, rows, labels=np.array([y for _, y in data]), label_every=2)
    found = feed(PerformanceEstimateDetector(), events)
    assert len(found) == 1
    assert 0 <= delay(found, drift_at) <= 1500
    measured = found[0].evidence["measured"]
    assert measured and measured["measured_accuracy"] < measured["baseline_accuracy"] - 0.05


# -- input integrity -----------------------------------------------------------------


def test_one_caller_sending_out_of_range_inputs_found_within_2000_events(cancer):
    x, _ = cancer
    rows = _resample(x, 16_000, seed=8)
    who = [f"user-{i % 11}" for i in range(len(rows))]
    drift_at = 12_000
    for i in range(drift_at, len(rows)):
        if i % 10 == 0:
            who[i] = "mallory"
            rows[i] = rows[i] * 2.5  # crafted, out of the reference range
    events = [event(i, r.tolist(), 0, principal=who[i]) for i, r in enumerate(rows)]
    found = feed(InputIntegrityDetector(), events)
    assert len(found) == 1
    assert 0 <= delay(found, drift_at) <= 2000
    ev = found[0].evidence
    assert ev["attribution"]["principal"] == "mallory"
    assert ev["attribution"]["top_principals"][0]["principal"] == "mallory"
    assert found[0].kind == "input_integrity" and "AML.T0043" in found[0].atlas


# -- reference file, bounds, evidence ------------------------------------------------------


def _jsonl(events) -> str:
    from msgspec import json as mjson

    return "\n".join(mjson.encode(e).decode() for e in events) + "\n"


def test_reference_file_judges_from_the_first_window(tmp_path):
    rng = np.random.default_rng(9)
    ref = [event(i, [float(v)], 0) for i, v in enumerate(rng.normal(size=2000))]
    path = tmp_path / "ref.jsonl"
    path.write_text(_jsonl(ref))
    live = [event(i, [float(v)], 0) for i, v in enumerate(rng.normal(1.0, 1, size=1000))]
    found = feed(FeatureDriftDetector(reference_path=str(path)), live)
    assert found and found[0].sources[0].offset <= 999


def test_bad_reference_file_fails_clearly(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ts": 1, "model_id": "m"}\n')
    with pytest.raises(ValueError, match=r"line 1: missing_field"):
        FeatureDriftDetector(reference_path=str(path))
    with pytest.raises(ValueError, match="cannot read"):
        FeatureDriftDetector(reference_path=str(tmp_path / "absent.jsonl"))


def test_models_are_capped_and_evictions_counted():
    det = ConfidenceDropDetector(max_models=3)
    events = [event(i, [0.0], 1, model=f"m{i % 10}", probabilities=[0.2, 0.8]) for i in range(3000)]
    feed(det, events)
    stats = det.stats()
    assert stats["entities"] == 3 and stats["evicted_total"] >= 7


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, float):
        yield value


def test_evidence_carries_no_raw_feature_values(cancer):
    x, _ = cancer
    rows = _resample(x, 10_000, seed=10)
    rows[6_000:, 2] += x[:, 2].std()
    events = [event(i, r.tolist(), 0) for i, r in enumerate(rows)]
    found = feed(FeatureDriftDetector(), events)
    evidence = json.loads(encode_finding(found[0]))["evidence"]
    raw = set(rows.ravel().tolist()) - {0.0, 1.0}  # shares can be exactly 0 or 1
    assert not raw.intersection(_numbers(evidence))
    assert set(evidence["top_features"][0]) == {
        "feature",
        "psi",
        "js_distance",
        "threshold",
        "missing_share_reference",
        "missing_share_window",
    }


# -- incidents, versions, refits -----------------------------------------------------------


def _gauss_events(values, start=0, version="1", principal="svc"):
    return [
        event(start + i, [float(v), float(w)], 0, version=version, principal=principal)
        for i, (v, w) in enumerate(values)
    ]


def test_drift_gives_one_finding_per_incident_and_again_after_recovery():
    rng = np.random.default_rng(12)
    calm = rng.normal(size=(20_000, 2))
    calm[6_000:10_000, 0] += 1.5  # first incident, 4000 events long
    calm[16_000:, 0] -= 1.5  # second incident after a quiet spell
    found = feed(FeatureDriftDetector(), _gauss_events(calm))
    assert [f.sources[0].offset // 1000 for f in found] == [6, 16]
    assert len({f.finding_id for f in found}) == 2


def test_new_model_version_learns_its_own_reference():
    rng = np.random.default_rng(13)
    v1 = _gauss_events(rng.normal(size=(6_000, 2)), version="1")
    v2 = _gauss_events(rng.normal(3.0, 1, size=(6_000, 2)), start=6_000, version="2")
    det = FeatureDriftDetector()
    assert feed(det, v1 + v2) == []
    assert det.stats()["models_with_reference"] == 2


def test_integrity_refits_on_schedule_without_alarming():
    rng = np.random.default_rng(14)
    det = InputIntegrityDetector(refit_every=6_000)
    events = _gauss_events(rng.normal(size=(20_000, 2)))
    assert feed(det, events) == []
    assert det.table.get("m@1").ref.fitted_at >= 12_000  # refitted at least once


def test_integrity_with_ecod_finds_out_of_range_inputs_within_2000_events():
    rng = np.random.default_rng(15)
    values = rng.normal(size=(8_000, 2))
    values[6_000::4] *= 6  # a quarter of the inputs far out
    found = feed(InputIntegrityDetector(method="ecod"), _gauss_events(values))
    assert 0 <= delay(found, 6_000) <= 2000
    assert found[0].evidence["outlier_model"] == "ecod"


def test_sampled_feature_drift_still_finds_shift_within_1000_events(cancer):
    x, _ = cancer
    rows = _resample(x, 12_000, seed=16)
    rows[8_000:, 3] += 0.7 * x[:, 3].std()
    events = [event(i, r.tolist(), 0) for i, r in enumerate(rows)]
    assert feed(FeatureDriftDetector(sample_every=4), events[:8_000]) == []
    found = feed(FeatureDriftDetector(sample_every=4), events)
    assert 0 <= delay(found, 8_000) <= 1000
    assert found[0].evidence["sample_every"] == 4


def test_snapshot_after_reference_fit_continues_identically(digits_stream):
    events, drift_at = digits_stream
    head, tail = events[: drift_at - 500], events[drift_at - 500 :]
    for cls in (
        FeatureDriftDetector,
        PredictionDriftDetector,
        ConfidenceDropDetector,
        PerformanceEstimateDetector,
        InputIntegrityDetector,
    ):
        original = cls()
        feed(original, head)
        restored = cls()
        restored.restore(original.snapshot())
        first = [encode_finding(f) for f in feed(original, tail)]
        assert first == [encode_finding(f) for f in feed(restored, tail)], cls.name
        assert cls is PredictionDriftDetector or first, f"{cls.name} found the noise"


def test_numpy_hbos_scores_equal_pyods_hbos():
    """Our numpy HBOS is pyod's HBOS formula: same scores, inside and outside the bins."""
    import numpy as np
    from pyod.models.hbos import HBOS

    from detectors.telemetry.adapters import NumpyHBOS

    rng = np.random.default_rng(3)
    train = rng.normal(size=(3000, 5))
    test = np.vstack([rng.normal(size=(500, 5)), rng.normal(scale=4.0, size=(200, 5))])
    reference = HBOS().fit(train).decision_function(test)
    ours = NumpyHBOS().fit(train).decision_function(test)
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)
