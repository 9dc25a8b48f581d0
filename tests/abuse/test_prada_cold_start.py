"""``extraction.prada`` on a cold start: no judgement before the model's calibration.

Issue #14 (cold start): on the first day of the world suite, before four of a
model's callers had been tested, PRADA judged by the paper's fixed W < 0.9,
and benign batch and noisy callers fell below it in the deployment's first
minutes (2 false findings in the 16 tuning worlds). It now abstains until the
bar is calibrated on the model's callers; a thief who starts first is still
found, at its first test after the calibration exists.
"""

from __future__ import annotations

import numpy as np

from detectors.abuse.prada import PradaExtractionDetector
from detectors.events import InferenceEvent
from detectors.testing import feed


def _q(t: float, who: str, x: np.ndarray) -> InferenceEvent:
    return InferenceEvent(ts=t, model_id="m", request_id=f"{who}-{t}", principal=who,
                          features=x.tolist(), prediction=int(x[0] > 0))


def _early_skewed_caller(rng: np.random.Generator) -> list[InferenceEvent]:
    """The first caller of a new model: natural queries of a mixture (tight 85%,
    wide otherwise: distances far from normal, W well below 0.9), 600 in 10 minutes."""
    return [_q(i, "batch-early", rng.normal(size=8) * (0.2 if rng.random() < 0.85 else 3.0))
            for i in range(600)]


def _later_callers(rng: np.random.Generator, start: float) -> list[InferenceEvent]:
    return [_q(start + i, f"u{i % 6}", rng.normal(size=8)) for i in range(1800)]


def test_the_first_caller_is_not_judged_before_the_model_is_calibrated() -> None:
    rng = np.random.default_rng(11)
    events = _early_skewed_caller(rng) + _later_callers(rng, 1000.0)
    fixed = feed(PradaExtractionDetector(judge_uncalibrated=True), events)
    assert [f.entity.id for f in fixed] == ["batch-early"]  # the paper's W < 0.9
    assert not fixed[0].evidence["calibrated"] and fixed[0].evidence["observed_w"] < 0.9
    det = PradaExtractionDetector()
    assert feed(det, events) == []
    stats = det.stats()
    assert stats["calibration_peers"] == 7 and stats["calibration_models"] == 1


def test_a_thief_who_starts_first_is_found_once_the_model_is_calibrated() -> None:
    rng = np.random.default_rng(12)
    seeds = rng.normal(size=(4, 8))
    thief = [_q(i, "thief", seeds[i % 4] + 10 ** rng.uniform(-3, 0) * rng.normal(size=8))
             for i in range(2000)]
    events = sorted(thief + _later_callers(rng, 200.0), key=lambda e: float(e.ts))
    det = PradaExtractionDetector()
    found = feed(det, events)
    assert [f.entity.id for f in found] == ["thief"]
    assert found[0].evidence["calibrated"] and found[0].evidence["peers"] >= 4
    # Judged no later than its first test after four callers had been tested.
    early = feed(PradaExtractionDetector(judge_uncalibrated=True), events)
    assert early[0].evidence["queries_examined"] <= found[0].evidence["queries_examined"]
    assert found[0].evidence["queries_examined"] <= 1000
