"""Model telemetry detectors: drift, confidence, performance estimate, input integrity.

All are per model and version (``scope = "model"``): see
:mod:`detectors.telemetry.window` for the reference, window and false-alarm
budget they share.
"""

from detectors.base import Detector
from detectors.telemetry.confidence import ConfidenceDropDetector
from detectors.telemetry.feature_drift import FeatureDriftDetector
from detectors.telemetry.integrity import InputIntegrityDetector
from detectors.telemetry.performance import PerformanceEstimateDetector
from detectors.telemetry.prediction_drift import PredictionDriftDetector

DETECTORS: tuple[type[Detector], ...] = (
    FeatureDriftDetector,
    PredictionDriftDetector,
    ConfidenceDropDetector,
    PerformanceEstimateDetector,
    InputIntegrityDetector,
)
