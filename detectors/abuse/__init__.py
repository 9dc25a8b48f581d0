"""Inference-abuse detectors: abusive volume, model extraction, adversarial probing."""

from detectors.abuse.probing import (
    BlacklightProbingDetector,
    LowConfidenceProbingDetector,
    StatefulKnnProbingDetector,
)
from detectors.abuse.volume import PrincipalRateDetector
from detectors.base import Detector

DETECTORS: tuple[type[Detector], ...] = (
    PrincipalRateDetector,
    StatefulKnnProbingDetector,
    BlacklightProbingDetector,
    LowConfidenceProbingDetector,
)
