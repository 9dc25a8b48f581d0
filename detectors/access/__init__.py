"""Access and audit detectors: exfiltration, suspicious access, poisoning precursors."""

from detectors.base import Detector

DETECTORS: tuple[type[Detector], ...] = ()
