"""Access and audit detectors: exfiltration, suspicious access, poisoning precursors.

All are ``partition``-scoped: audit events are keyed by the actor and access
events by the principal, and the daemon co-partitions the two topics, so the
per-principal state of every detector sees all of that principal's events.

One module per detector, named for what it detects (a large one keeps its
per-entity state and its findings beside it: ``exfiltration_state``,
``exfiltration_findings``, ``actor_runs``, ``model_change_findings``);
:mod:`~detectors.access.audit_fields` (what event fields mean),
:mod:`~detectors.access.baselines` (learnt baselines) and
:mod:`~detectors.access.pipeline_runs` (run ids) are shared.
"""

from detectors.access.auth_failures import AuthFailureBurstDetector
from detectors.access.deletions import DeletionDetector
from detectors.access.exfiltration import ExfiltrationDetector
from detectors.access.model_changes import ModelChangeOutsidePipelineDetector
from detectors.access.new_locations import NewLocationDetector
from detectors.access.privilege_grants import PrivilegeGrantDetector
from detectors.access.rare_resources import RareResourceDetector
from detectors.access.training_writes import TrainingDataWriteDetector
from detectors.access.travel import ImpossibleTravelDetector
from detectors.access.unusual_hours import UnusualHoursDetector
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
