"""Access and audit detectors: exfiltration, suspicious access, poisoning precursors.

All are ``partition``-scoped: audit events are keyed by the actor and access
events by the principal, and the daemon co-partitions the two topics, so the
per-principal state of every detector sees all of that principal's events.
"""

from detectors.access.exfiltration import ExfiltrationDetector, UnusualHoursDetector
from detectors.access.poisoning import (
    DeletionDetector,
    ModelChangeOutsidePipelineDetector,
    TrainingDataWriteDetector,
)
from detectors.access.suspicious import (
    AuthFailureBurstDetector,
    ImpossibleTravelDetector,
    NewLocationDetector,
    PrivilegeGrantDetector,
    RareResourceDetector,
)
from detectors.base import Detector

DETECTORS: tuple[type[Detector], ...] = (
    ExfiltrationDetector,
    UnusualHoursDetector,
    ImpossibleTravelDetector,
    AuthFailureBurstDetector,
    NewLocationDetector,
    RareResourceDetector,
    PrivilegeGrantDetector,
    TrainingDataWriteDetector,
    ModelChangeOutsidePipelineDetector,
    DeletionDetector,
)
