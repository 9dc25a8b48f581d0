"""Inference-abuse detectors: abusive volume, model extraction, adversarial probing."""

from detectors.abuse.blacklight import BlacklightProbingDetector
from detectors.abuse.coverage import CoverageExtractionDetector
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
    StatefulKnnProbingDetector,
    BlacklightProbingDetector,
    LowConfidenceProbingDetector,
)
