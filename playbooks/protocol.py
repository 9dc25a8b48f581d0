"""What the daemon hands findings to: the response side, as a typed interface.

The consumer loop (``daemon/runtime.py``) depends on this Protocol, not on
the engine's class: :class:`playbooks.engine.ResponseEngine` satisfies it, and
so does the daemon's wrapper that adds the Kafka publisher
(``daemon.response.ResponseRoute``) or any test double.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from detectors.findings import Finding

__all__ = ["ResponseSide"]


@runtime_checkable
class ResponseSide(Protocol):
    """Findings in, responses out; the daemon's only view of ``playbooks/``."""

    def start(self) -> None:
        """Start delivering (background threads); called once, before the first submit."""

    def submit(self, finding: Finding) -> None:
        """Take one acknowledged finding; never waits on the network.

        Raises :class:`~playbooks.outbox.OutboxUnavailable` when the finding
        could not be recorded: the caller must not treat it as taken (it does
        not commit the batch and submits it again).
        """

    def handle_slack_interaction(self, headers: Mapping[str, str], body: bytes
                                 ) -> tuple[int, bytes]:
        """Slack's POST to the interactivity URL -> (HTTP status, body)."""

    def stop(self, timeout: float = 10.0) -> int:
        """Deliver what is due within ``timeout``; return how many actions were not."""
