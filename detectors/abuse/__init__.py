"""Inference-abuse detectors: abusive volume, model extraction, adversarial probing.

One module per detector: ``volume`` (``volume.principal_rate``,
``volume.peer_rate``), ``prada``, ``coverage`` and ``density`` (``extraction.*``), ``knn``,
``blacklight`` and ``low_confidence`` (``probing.*``). What they share:
``common`` (batched per-principal judging, cooldown, findings), ``space`` (a
model's input layout and scale), ``calibration`` (per-model thresholds and
count rules), ``peers`` (peer baselines across partitions). Their parts:
``prada_state`` and ``normality`` (PRADA), ``grid``, ``sketch``, ``population``
and ``novelty`` (coverage), ``fingerprints`` (Blacklight).
"""

from detectors.abuse.blacklight import BlacklightProbingDetector
from detectors.abuse.coverage import CoverageExtractionDetector
from detectors.abuse.density import DensityExtractionDetector
from detectors.abuse.knn import StatefulKnnProbingDetector
from detectors.abuse.low_confidence import LowConfidenceProbingDetector
from detectors.abuse.prada import PradaExtractionDetector
from detectors.abuse.volume import PeerRateDetector, PrincipalRateDetector
from detectors.base import Detector

DETECTORS: tuple[type[Detector], ...] = (
    PrincipalRateDetector,
    PeerRateDetector,
    PradaExtractionDetector,
    CoverageExtractionDetector,
    DensityExtractionDetector,
    StatefulKnnProbingDetector,
    BlacklightProbingDetector,
    LowConfidenceProbingDetector,
)
