"""Inference-abuse detectors: abusive volume, model extraction, adversarial probing."""

from detectors.abuse.density import DensityExtractionDetector
from detectors.abuse.extraction import CoverageExtractionDetector, PradaExtractionDetector
from detectors.abuse.probing import (
    BlacklightProbingDetector,
    LowConfidenceProbingDetector,
    StatefulKnnProbingDetector,
)
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
