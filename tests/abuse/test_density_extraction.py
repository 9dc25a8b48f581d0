"""extraction.density: off-distribution (synthetic) queries against the model's population."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.abuse.density import DensityExtractionDetector, PopulationSample, calibrate_far
from detectors.events import InferenceEvent
from detectors.testing import feed

DIMS = 16


def _q(i: int, who: str, x: np.ndarray, model: str = "m") -> InferenceEvent:
    return InferenceEvent(ts=1_000.0 + i, model_id=model, request_id=f"r{i}", principal=who,
                          features=[round(float(v), 5) for v in x], prediction=0)


def _world(seed: int, n: int = 9000, callers: int = 12, noisy: bool = True) -> tuple[
        np.random.Generator, np.ndarray, list[InferenceEvent]]:
    """Natural traffic: inputs around a few clusters; half the callers add their own noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, DIMS)) * 3
    who = rng.integers(callers, size=n)
    noise = np.where((who % 2 == 1) & noisy, 1.6, 1.0)
    x = centres[rng.integers(5, size=n)] + rng.normal(size=(n, DIMS)) * noise[:, None]
    return rng, centres, [_q(i, f"u{w}", x[i]) for i, w in enumerate(who)]


def _with_thief(seed: int, n_thief: int, thief_rows: np.ndarray | None = None,
                who: str = "thief") -> tuple[list[InferenceEvent], list[InferenceEvent]]:
    """Benign traffic, then more of it with a thief's queries mixed in (one in four)."""
    rng, _, users = _world(seed, n=12_000)
    head, tail = users[:8000], users[8000:]
    rows = thief_rows if thief_rows is not None else rng.uniform(-8, 8, size=(n_thief, DIMS))
    mixed: list[InferenceEvent] = []
    k = 0
    for i, e in enumerate(tail):
        mixed.append(e)
        if i % 3 == 2 and k < len(rows):
            mixed.append(_q(20_000 + k, who, rows[k]))
            k += 1
    return head, mixed


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_uniform_thief_is_found_and_benign_callers_never(seed):
    head, mixed = _with_thief(seed, 400)
    benign = [e for e in mixed if e.principal != "thief"]
    det = DensityExtractionDetector()
    assert feed(det, head + benign) == []
    stats = det.stats()  # the sample sizes the rule rests on (mlwatchd eval --worlds shows them)
    assert stats["calibrated_models"] == 1 and stats["calibration_queries"] == 4096
    assert 4 <= stats["calibration_principals"] <= 12
    found = feed(DensityExtractionDetector(), head + mixed)
    assert [(f.entity.id, f.kind) for f in found] == [("thief", "model_extraction")]
    ev = found[0].evidence
    assert ev["queries_examined"] <= 256 and ev["observed_far"] >= ev["threshold_count"]
    assert "AML.T0024.002" in found[0].atlas


def test_natural_data_thief_at_volume_is_not_this_detectors_business():
    _, centres, _ = _world(4)
    rng = np.random.default_rng(40)
    x = centres[rng.integers(5, size=1000)] + rng.normal(size=(1000, DIMS))
    head, mixed = _with_thief(4, 1000, thief_rows=x)
    assert feed(DensityExtractionDetector(), head + mixed) == []


def test_nothing_is_judged_before_the_population_calibrates():
    rng = np.random.default_rng(5)
    box = rng.uniform(-8, 8, size=(2000, DIMS))
    assert feed(DensityExtractionDetector(), [_q(i, "thief", x) for i, x in enumerate(box)]) == []


def test_a_population_wide_shift_is_drift_not_extraction():
    rng, centres, users = _world(6)
    n = 4000
    moved = centres[rng.integers(5, size=n)] + rng.normal(size=(n, DIMS)) + 6.0  # upstream change
    after = [_q(len(users) + i, f"u{i % 12}", x) for i, x in enumerate(moved)]
    assert feed(DensityExtractionDetector(), users + after) == []
    # The same shift by one principal only is reported.
    head, mixed = _with_thief(6, 400, thief_rows=moved[:400], who="odd")
    assert [f.entity.id for f in feed(DensityExtractionDetector(), head + mixed)] == ["odd"]


def test_evidence_carries_statistics_not_feature_values():
    box = np.random.default_rng(70).uniform(-8, 8, size=(300, DIMS))
    head, mixed = _with_thief(7, 300, thief_rows=box)
    found = feed(DensityExtractionDetector(), head + mixed)
    assert found
    for value in found[0].evidence.values():
        assert isinstance(value, (int, float, str))
    assert not any(f"{v:.3f}" in found[0].summary for v in box[-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_share_spares_a_caller_with_its_own_segment(seed):
    """A new benign caller sends natural inputs, a fifth of them from a cluster no
    other caller sends (its own customers): over the count rule, but its typical
    query is where everybody's are; ``min_share`` 0.5 spares it."""
    rng, centres, _ = _world(seed, n=12_000)
    n = 1200
    x = centres[rng.integers(5, size=n)] + rng.normal(size=(n, DIMS))
    own = rng.random(n) < 0.2
    x[own] = rng.normal(size=DIMS) * 3 + rng.normal(size=(int(own.sum()), DIMS))
    head, mixed = _with_thief(seed, n, thief_rows=x, who="segment")
    assert feed(DensityExtractionDetector(min_share=0.5), head + mixed) == []
    # The count rule alone (the default) reports it.
    found = feed(DensityExtractionDetector(), head + mixed)
    assert [f.entity.id for f in found] == ["segment"]
    assert found[0].evidence["observed_share"] < 0.5


def test_calibration_keeps_the_threshold_in_every_typical_callers_tail():
    """The threshold is at least the median of the callers' own 99th percentiles,
    so a noisy (but typical) caller's ordinary window is not reported."""
    rng = np.random.default_rng(8)
    clean = {f"c{i}": rng.normal(1.0, 0.05, 300).tolist() for i in range(8)}
    noisy = {f"n{i}": rng.normal(1.15, 0.05, 300).tolist() for i in range(10)}
    samples = {**clean, **noisy}
    rule = calibrate_far(samples, q=0.001, alpha=1e-6, window=64)
    assert rule is not None
    tails = sorted(float(np.quantile(v, 0.99)) for v in samples.values())
    assert rule.threshold >= float(np.median(tails))
    fresh = rng.normal(1.15, 0.05, 64)  # a window of a noisy caller's ordinary queries
    assert (fresh >= rule.threshold).sum() < rule.min_flagged
    far = rng.normal(1.6, 0.1, 64)  # far beyond every caller
    assert (far >= rule.threshold).sum() >= rule.min_flagged


def test_population_sample_is_balanced_by_owner():
    sample = PopulationSample(64, 2, min_owners=4)
    rows = np.ones((200, 2), dtype=np.float32)
    sample.add(rows, owner=1)
    assert sample.count == {1: 16} and sample.filled == 16  # one caller: at most its share
    for owner in (2, 3, 4, 5, 6):
        sample.add(rows, owner=owner)
    assert sample.filled == 64 and sum(sample.count.values()) == 64
    held = np.bincount(sample.owners, minlength=7)[1:].tolist()
    assert held == [sample.count.get(o, 0) for o in range(1, 7)]  # the books match the rows
    assert max(held) - min(held) <= 1  # newcomers took rows from the largest holders


def test_params_are_checked():
    with pytest.raises(ValueError):
        DensityExtractionDetector(quantile=0.0)
    with pytest.raises(ValueError):
        DensityExtractionDetector(window=8, batch_size=32)
    with pytest.raises(ValueError):
        DensityExtractionDetector(min_share=1.5)
