"""extraction.density: off-distribution (synthetic) queries against the model's population."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.abuse.calibration import calibrate_tail
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_uniform_thief_is_found_and_benign_callers_never(seed):
    rng, _, users = _world(seed)
    assert feed(DensityExtractionDetector(), users) == []
    box = rng.uniform(-8, 8, size=(400, DIMS))
    thief = [_q(len(users) + i, "thief", x) for i, x in enumerate(box)]
    found = feed(DensityExtractionDetector(), users + thief)
    assert [(f.entity.id, f.kind) for f in found] == [("thief", "model_extraction")]
    ev = found[0].evidence
    assert ev["queries_examined"] <= 128 and ev["observed_far"] >= ev["threshold_count"]
    assert "AML.T0024.002" in found[0].atlas


def test_natural_data_thief_at_volume_is_not_this_detectors_business():
    rng, centres, users = _world(4)
    x = centres[rng.integers(5, size=1500)] + rng.normal(size=(1500, DIMS))
    thief = [_q(len(users) + i, "thief", row) for i, row in enumerate(x)]
    assert feed(DensityExtractionDetector(), users + thief) == []


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
    alone = [_q(len(users) + i, "odd", x) for i, x in enumerate(moved[:400])]
    assert [f.entity.id for f in feed(DensityExtractionDetector(), users + alone)] == ["odd"]


def test_evidence_carries_statistics_not_feature_values():
    rng, _, users = _world(7)
    box = rng.uniform(-8, 8, size=(200, DIMS))
    found = feed(DensityExtractionDetector(), users + [_q(len(users) + i, "thief", x)
                                                      for i, x in enumerate(box)])
    assert found
    for value in found[0].evidence.values():
        assert isinstance(value, (int, float, str))
    assert not any(f"{v:.3f}" in found[0].summary for v in box[-1])


def test_calibration_keeps_the_threshold_in_every_typical_callers_tail():
    """A pooled 0.1% tail set by clean callers would mark a noisy caller's ordinary
    queries; the per-caller floor does not."""
    rng = np.random.default_rng(8)
    clean = {f"c{i}": rng.normal(1.0, 0.05, 300).tolist() for i in range(10)}
    noisy = {f"n{i}": rng.normal(1.15, 0.05, 300).tolist() for i in range(8)}
    samples = {**clean, **noisy}
    pooled = calibrate_tail(samples, q=0.001, alpha=1e-6, window=64, low=False)
    floored = calibrate_far(samples, q=0.001, alpha=1e-6, window=64)
    assert pooled is not None and floored is not None
    fresh = rng.normal(1.15, 0.05, 64)  # a window of a noisy caller's ordinary queries
    assert (fresh >= pooled.threshold).sum() >= pooled.min_flagged  # would be reported
    assert (fresh >= floored.threshold).sum() < floored.min_flagged


def test_population_sample_is_balanced_by_owner():
    sample = PopulationSample(64, 2, min_owners=4)
    rows = np.ones((200, 2), dtype=np.float32)
    sample.add(rows, owner=1)
    assert sample.count == {1: 16} and sample.filled == 16  # one caller: at most its share
    for owner in (2, 3, 4, 5, 6):
        sample.add(rows, owner=owner)
    assert sample.filled == 64 and sum(sample.count.values()) == 64
    assert max(sample.count.values()) <= 16 and len(sample.count) >= 4
    assert sorted(np.bincount(sample.owners)[1:].tolist(), reverse=True)[:1] == [16]


def test_params_are_checked():
    with pytest.raises(ValueError):
        DensityExtractionDetector(quantile=0.0)
    with pytest.raises(ValueError):
        DensityExtractionDetector(window=8, batch_size=32)
