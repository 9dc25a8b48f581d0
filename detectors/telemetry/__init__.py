"""Model telemetry detectors: drift, confidence, performance estimate, input integrity."""

from detectors.base import Detector

DETECTORS: tuple[type[Detector], ...] = ()
