"""Action types: what a playbook can do when a route matches.

Every action type describes itself (Falco Talon's actionners): ``name``,
``category``, ``description``, a typed ``Params`` model validated when the
playbook is loaded (never when it fires) and a YAML ``example``. The registry
is the explicit :data:`ACTION_TYPES` list; nothing registers itself on import.

An action implements one method, :meth:`ActionType.deliver`, which makes one
attempt and returns what to remember (e.g. a Slack ``ts``) or raises
:class:`~playbooks.outcomes.RetryLater` / :class:`~playbooks.outcomes.PermanentFailure`;
the outbox (:mod:`playbooks.outbox`) owns retries, backoff, idempotency and
the audit trail (StreamAlert's outputs registry). :meth:`ActionType.preview`
is what a dry run records instead.

Privacy: Slack, webhook, OCSF and PagerDuty actions only ever see the
*outside* view of a finding (:func:`playbooks.outside.outside_view`: pseudonyms
for principals and IPs when enabled, a masked summary, statistics-only
evidence). The kafka action talks to the team's own enforcement points, which
need the real principal to block it, so its messages carry real ids (like the
findings topic).

Phases an action can act on: ``alert`` (a new incident, or a more severe
finding in one), ``repeat`` ("N more in the last M minutes"), ``escalated``,
``acknowledged``, ``resolved``, and for the engine's own use ``approval``
(an Approve/Deny request), ``decision`` (its outcome) and ``revert`` (a TTL
expired).

One module per kind of action: :mod:`~playbooks.actions.chat` (slack, log),
:mod:`~playbooks.actions.webhooks` (webhook, ocsf), :mod:`~playbooks.actions.paging`
(pagerduty), :mod:`~playbooks.actions.containment` (kafka); the shared model is
:mod:`~playbooks.actions.base`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from playbooks.actions.base import (
    PHASES,
    ActionCall,
    ActionRuntime,
    ActionType,
    Phase,
    Publish,
)
from playbooks.actions.chat import LogAction, SlackAction, SlackParams
from playbooks.actions.containment import REVERT, KafkaAction
from playbooks.actions.paging import PagerDutyAction
from playbooks.actions.webhooks import OcsfAction, WebhookAction

__all__ = [
    "ACTION_TYPES",
    "PHASES",
    "REVERT",
    "ActionCall",
    "ActionRuntime",
    "ActionType",
    "KafkaAction",
    "LogAction",
    "OcsfAction",
    "PagerDutyAction",
    "Phase",
    "Publish",
    "SlackAction",
    "SlackParams",
    "WebhookAction",
    "action_type",
]

#: The registry: every action type, explicitly (no import side effects).
ACTION_TYPES: Final[tuple[type[ActionType], ...]] = (
    SlackAction, WebhookAction, KafkaAction, PagerDutyAction, LogAction, OcsfAction,
)
_BY_NAME: Final[Mapping[str, type[ActionType]]] = {t.name: t for t in ACTION_TYPES}


def action_type(name: str) -> type[ActionType] | None:
    """The action type called ``name``, or None."""
    return _BY_NAME.get(name)
