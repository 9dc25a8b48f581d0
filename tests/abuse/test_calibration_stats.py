"""Every calibrated abuse detector reports its calibration sample sizes in ``stats()``.

Issue #14 asks for each detector's false-alarm rate *with its calibration
sample size*; ``mlwatchd eval`` collects the ``calibration_*`` keys
(:func:`daemon.lab.worldeval.calibration_sizes`). Before any traffic the sizes
are 0; after a model's benign population has calibrated the detector they are
the sample the thresholds rest on.
"""

from __future__ import annotations

import numpy as np
import pytest

from daemon.lab.worldeval import calibration_sizes
from detectors.abuse.blacklight import BlacklightProbingDetector
from detectors.abuse.coverage import CoverageExtractionDetector
from detectors.abuse.knn import StatefulKnnProbingDetector
from detectors.abuse.low_confidence import LowConfidenceProbingDetector
from detectors.base import Detector
from detectors.events import InferenceEvent
from detectors.testing import feed

CALLERS = 12


def _traffic(n: int = 3600) -> list[InferenceEvent]:
    rng = np.random.default_rng(5)
    return [
        InferenceEvent(ts=float(i), model_id="m", request_id=str(i), principal=f"u{i % CALLERS}",
                       features=rng.normal(size=8).round(3).tolist(), prediction=0,
                       confidence=float(rng.uniform(0.3, 1.0)))
        for i in range(n)
    ]


DETECTORS = {
    "coverage": (CoverageExtractionDetector, ("peers", "novelty_peers")),
    "knn": (StatefulKnnProbingDetector, ("queries", "principals")),
    "blacklight": (BlacklightProbingDetector, ("queries", "principals")),
    "low_confidence": (LowConfidenceProbingDetector, ("answers",)),
}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_calibration_sizes_are_reported(name: str) -> None:
    cls, keys = DETECTORS[name]
    detector: Detector = cls()
    before = detector.stats()
    assert all(before[f"calibration_{k}"] == 0 for k in keys)
    assert before["calibrated_models"] == 0
    feed(detector, _traffic())
    after = detector.stats()
    assert after["calibrated_models"] == 1
    for k in keys:
        assert after[f"calibration_{k}"] > 0
    if "principals" in keys:  # the calibration sample spans the callers
        assert 10 <= after["calibration_principals"] <= CALLERS
    if "peers" in keys:
        assert after["calibration_peers"] == CALLERS

    class _Pipe:
        def detectors(self) -> list[tuple[int, Detector]]:
            return [(0, detector)]

    sizes = calibration_sizes(_Pipe())[detector.name]
    assert {k: sizes[k] for k in keys} == {k: after[f"calibration_{k}"] for k in keys}
