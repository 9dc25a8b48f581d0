"""The action model every action type builds on.

:class:`ActionType` (what an action is and the one method it implements),
:class:`ActionCall` (one delivery attempt's input), :class:`ActionRuntime`
(what actions reach the world through) and the shared parameter bases.
See :mod:`playbooks.actions` for the registry and the privacy rules.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from detectors.findings import Finding, rfc3339
from playbooks.config import Duration
from playbooks.outside import outside_view
from playbooks.privacy import Pseudonymizer
from playbooks.slack_post import SlackPoster

Phase: TypeAlias = Literal[
    "alert", "repeat", "escalated", "acknowledged", "resolved", "approval", "decision", "revert"
]
PHASES: Final[tuple[str, ...]] = (
    "alert", "repeat", "escalated", "acknowledged", "resolved", "approval", "decision", "revert"
)
#: Phases a playbook author may list in an action's ``phases``
#: (not ``on``: YAML 1.1 reads that key as true).
UserPhase = Literal["alert", "repeat", "escalated", "acknowledged", "resolved"]

#: ``publish(topic, key, value, headers)``: the daemon's Kafka producer; raises on failure.
Publish: TypeAlias = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]]], None]

@dataclass
class ActionRuntime:
    """What actions reach the world through; built once by the engine."""

    slack: SlackPoster | None = None
    publish: Publish | None = None
    actions_topic: str = "mlwatchd.actions"
    interactivity: bool = False
    pseudonymizer: Pseudonymizer | None = None
    clock: Callable[[], float] = time.time


@dataclass
class ActionCall:
    """One delivery attempt's input: the finding, where it is in its incident, and why."""

    phase: str
    route: str
    action: str
    finding: Finding
    idempotency_key: str
    incident_id: str = ""
    incident_count: int = 1
    incident_first_seen: float = 0.0
    mitigations: Sequence[str] = ()
    #: Results of this action's earlier deliveries in this incident (e.g. the thread ``ts``).
    state: Mapping[str, Any] = field(default_factory=dict)
    #: Phase details: notice text, approval id, decision, the message to revert.
    extra: Mapping[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    #: When an earlier attempt whose outcome is unknown started (it may have
    #: been delivered: timed out, connection lost, process died); None if none.
    unknown_since: float | None = None

    def context(self, pseudonymizer: Pseudonymizer | None, *, outside: bool) -> dict[str, Any]:
        """Template variables; ``outside=True`` gives the pseudonymised, masked view."""
        if outside:
            view = outside_view(self.finding, pseudonymizer)
        else:
            f = self.finding
            view = outside_view(f, None)
            view.update({"summary": f.summary, "entity.id": f.entity.id})
        view.update({
            "mitigations": list(self.mitigations),
            "route": self.route,
            "action": self.action,
            "phase": self.phase,
            "incident.count": self.incident_count,
            "incident.first_seen": rfc3339(self.incident_first_seen or self.extra.get(
                "now", 0.0), millis=False),
        })
        return view


class Params(BaseModel):
    """Base of every action's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def env_or_file_secret(env: str | None, path: Path | None, what: str) -> SecretStr | None:
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise ValueError(f"{what}: environment variable {env} is not set")
        return SecretStr(value)
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{what}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"{what}: {path} is empty")
        return SecretStr(value)
    return None


class ActionType(ABC):
    """Base of action types; subclasses set the class attributes and ``deliver``."""

    name: ClassVar[str]
    category: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    example: ClassVar[str]
    #: Phases acted on when the playbook's ``phases`` does not say.
    default_phases: ClassVar[tuple[str, ...]]

    def __init__(self, action_name: str, params: BaseModel) -> None:
        self.action_name = action_name
        self.params = params

    def phases(self) -> frozenset[str]:
        """The phases this configured action acts on (``approval``/``decision``: Slack's)."""
        on = getattr(self.params, "phases", None)
        return frozenset(on if on is not None else self.default_phases)

    def handles(self, phase: str) -> bool:
        return phase in self.phases()

    def destination(self) -> str:
        """Deliveries to one destination pause together after a 429."""
        return f"{self.name}:{self.action_name}"

    def describe(self, call: ActionCall, runtime: ActionRuntime) -> str:
        """One line for an approval request: what running this will do (outside-safe)."""
        return self.description

    @abstractmethod
    def deliver(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        """One attempt; returns what to remember, raises RetryLater/PermanentFailure."""

    def preview(self, call: ActionCall, runtime: ActionRuntime) -> dict[str, Any]:
        """What a dry run records instead of delivering (never secrets, outside-safe)."""
        return {"would": self.describe(call, runtime)}

    def secrets(self) -> list[str]:
        """Configured values that must never appear in logs, the outbox or the audit trail."""
        return []



class HttpParams(Params):
    timeout: Duration = Field(10.0, gt=0, le=60)
    #: Extra CA bundle for a private CA. Verification itself cannot be turned off.
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value
