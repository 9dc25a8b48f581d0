"""What a telemetry detector keeps about one model version: its blocks, window and incident.

:class:`ModelState` holds the reference (or the blocks it is learnt from), the
sliding window of :class:`Block` summaries and where each began, and whether
an incident is open; :class:`~detectors.telemetry.window.WindowedModelDetector`
drives it (see there for the life of a model).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from detectors.events import InferenceEvent
from detectors.findings import Source
from detectors.state_codec import state_type
from detectors.telemetry.reference_file import model_key

__all__ = ["Block", "ModelState"]


@state_type("telemetry.block")
class Block:
    """Summary of ``step`` consecutive events of one model (detector-specific payload)."""

    __slots__ = ("data", "n", "principals")

    def __init__(self, n: int, principals: list[str], data: Any) -> None:
        self.n = n
        self.principals = principals
        self.data = data


@state_type("telemetry.model_state")
class ModelState:
    """Everything a detector keeps about one model version."""

    __slots__ = (
        "blocks",
        "calm",
        "evaluations",
        "extra",
        "first_source",
        "incident",
        "items",
        "key",
        "model_id",
        "params",
        "ref",
        "ref_blocks",
        "seen",
        "version",
        "window_sources",
    )

    def __init__(self, model_id: str, version: str | None, params: dict[str, float]) -> None:
        self.model_id = model_id
        self.version = version
        self.key = model_key(model_id, version)
        self.params = params
        self.items: list[InferenceEvent] = []
        self.first_source: Source | None = None
        self.window_sources: deque[Source] = deque()
        self.ref_blocks: list[Block] = []
        self.ref: Any = None
        self.blocks: deque[Block] = deque()
        self.seen = 0
        self.evaluations = 0
        self.incident = False
        self.calm = 0
        self.extra: Any = None

    def learn(
        self, block: Block, reference_size: int, fit: Callable[[ModelState, list[Block]], Any]
    ) -> None:
        """Add a reference block; once ``reference_size`` events are seen, ``fit`` the
        reference. A failed fit leaves the state as before its reference began (the
        next fit learns from new events, never these rows again) and raises."""
        self.ref_blocks.append(block)
        if self.seen >= reference_size:
            blocks, self.ref_blocks = self.ref_blocks, []
            try:
                self.ref = fit(self, blocks)
            except Exception:
                self.seen, self.extra = 0, None
                raise

    def slide(self, block: Block, source: Source, k: int) -> bool:
        """Add ``block`` (which began at ``source``) to the window of the last ``k``
        blocks; True once the window is full."""
        self.blocks.append(block)
        self.window_sources.append(self.first_source or source)
        if len(self.blocks) > k:
            self.blocks.popleft()
            self.window_sources.popleft()
        return len(self.blocks) >= k

    def settle(self, drifted: bool, k: int) -> bool:
        """Track the incident after an evaluation; True if ``drifted`` opens one (one
        finding per incident; it closes after ``k`` quiet evaluations in a row)."""
        if not drifted:
            if self.incident:
                self.calm += 1
                if self.calm >= k:
                    self.incident = False
            return False
        self.calm = 0
        if self.incident:
            return False
        self.incident = True
        return True
