"""Playbook files: named actions and the routes that match findings to them.

Every ``*.yaml`` file in the playbook folder has two optional sections::

    actions:                       # named, typed actions (see playbooks.actions)
      slack-security:
        type: slack
        params: {link: "https://grafana.example.com/d/ml?var-finding={finding_id}"}
      rate-limit-caller:
        type: kafka
        requires_approval: true     # posts Approve / Deny in Slack first
        params: {action: rate_limit, ttl: 1h, params: {requests_per_minute: 10}}
    routes:
      - name: extraction
        match:                      # every given criterion must hold
          kinds: [model_extraction]
          detectors: ["extraction.*"]   # globs
          min_severity: high
          entity_types: [principal]
          models: ["fraud-*"]           # globs over model_id
        actions: [slack-security, rate-limit-caller]
        mitigations: [AML.M0004, AML.M0019]
        dedup: {key: "{kind}:{entity.id}", window: 30m}   # one incident per key
        realert: 10m                # at most one "N more" summary per 10 minutes
        resolve: {notify: true}     # "resolved" after `window` without a match
        escalation: {after: 15m, route: extraction-page}
        dry_run: false
        continue: false             # stop at the first matching route (default)

Action and route names are global over the folder (files are read in name
order; routes are tried in that order). A route without ``match`` is only an
escalation target. Everything is checked at load: :func:`load_playbooks`
raises :class:`PlaybookError` with one line per problem, e.g.
``extraction.yaml: actions.rate-limit-caller.params.ttl: rate_limit ...``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from detectors.findings import KINDS, Finding, severity_at_least
from playbooks.actions import ActionType, action_type
from playbooks.config import Duration
from playbooks.templates import Template, TemplateField

__all__ = [
    "MatchSpec",
    "PlaybookError",
    "PlaybookSet",
    "Route",
    "load_playbooks",
]

_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")
_MITIGATION: Final = re.compile(r"^AML\.M\d{4}$")
DEFAULT_DEDUP_KEY: Final = "{kind}:{entity.type}:{entity.id}:{model_id}"


class PlaybookError(Exception):
    """Playbooks that cannot run; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchSpec(_Strict):
    kinds: list[str] = Field(default_factory=list)
    detectors: list[str] = Field(default_factory=list)
    min_severity: Literal["info", "low", "medium", "high", "critical"] = "info"
    entity_types: list[Literal["model", "principal", "resource", "ip"]] = Field(
        default_factory=list)
    models: list[str] = Field(default_factory=list)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = [k for k in kinds if k != "*" and k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kind {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(KINDS))}")
        return kinds

    def matches(self, finding: Finding) -> bool:
        if self.kinds and "*" not in self.kinds and finding.kind not in self.kinds:
            return False
        if not severity_at_least(finding.severity, self.min_severity):
            return False
        if self.entity_types and finding.entity.type not in self.entity_types:
            return False
        if self.detectors and not any(fnmatch.fnmatchcase(finding.detector, g)
                                      for g in self.detectors):
            return False
        if self.models:
            model = finding.model_id or ""
            if not any(fnmatch.fnmatchcase(model, g) for g in self.models):
                return False
        return True


class DedupSpec(_Strict):
    #: Findings rendering the same key belong to one incident (real ids; stays local).
    key: TemplateField = Field(default_factory=lambda: Template.compile(DEFAULT_DEDUP_KEY))
    #: Quiet period: no matching finding for this long closes (resolves) the incident.
    window: Duration = Field(1800.0, gt=0)


class ResolveSpec(_Strict):
    #: Send a "resolved" notice (Slack thread, PagerDuty resolve, ...) when it closes.
    notify: bool = True


class EscalationSpec(_Strict):
    after: Duration = Field(gt=0)
    route: str


class ActionSpec(_Strict):
    type: str
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    #: Post Approve / Deny in Slack and run only when approved.
    requires_approval: bool = False
    dry_run: bool = False


class RouteSpec(_Strict):
    name: str
    description: str = ""
    match: MatchSpec | None = None
    actions: list[str] = Field(min_length=1)
    mitigations: list[str] = Field(default_factory=list)
    dedup: DedupSpec = Field(default_factory=lambda: DedupSpec.model_validate({}))
    #: Between two notices about one incident; repeats in between are summarised.
    realert: Duration = Field(600.0, ge=0)
    resolve: ResolveSpec = Field(default_factory=lambda: ResolveSpec())
    escalation: EscalationSpec | None = None
    dry_run: bool = False
    continue_: bool = Field(False, alias="continue")

    @field_validator("mitigations")
    @classmethod
    def _mitigation_ids(cls, ids: list[str]) -> list[str]:
        bad = [m for m in ids if not _MITIGATION.match(m)]
        if bad:
            raise ValueError(f"not an ATLAS mitigation id (AML.M0000): {', '.join(bad)}")
        return ids


@dataclass(frozen=True)
class BoundAction:
    """A named action with its validated params and flags."""

    name: str
    action: ActionType
    requires_approval: bool
    dry_run: bool
    source: str


@dataclass(frozen=True)
class Route:
    """A validated route: its spec, and where it came from."""

    spec: RouteSpec
    source: str

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class PlaybookSet:
    """All routes (in order) and named actions of a playbook folder."""

    routes: list[Route] = field(default_factory=list)
    actions: dict[str, BoundAction] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def route(self, name: str) -> Route | None:
        return next((r for r in self.routes if r.name == name), None)

    def matching(self, finding: Finding) -> Iterator[Route]:
        """Routes whose ``match`` holds, in order, stopping after one without ``continue``."""
        for route in self.routes:
            match = route.spec.match
            if match is None or not match.matches(finding):
                continue
            yield route
            if not route.spec.continue_:
                return

    def summary(self) -> str:
        return (f"{len(self.routes)} routes, {len(self.actions)} actions "
                f"from {len(self.files)} files")


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "file"


def _errors(exc: pydantic.ValidationError, prefix: str) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        where = _loc(tuple(err["loc"]))
        where = f"{prefix}.{where}" if prefix and where != "file" else prefix or where
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return lines


def _route_label(index: int, raw: Any) -> str:
    name = raw.get("name") if isinstance(raw, Mapping) else None
    return f"routes[{index}]" + (f" ({name})" if isinstance(name, str) else "")


def load_playbooks(directory: str | Path) -> PlaybookSet:
    """Read and validate every ``*.yaml`` in ``directory``; PlaybookError lists all problems."""
    folder = Path(directory)
    if not folder.is_dir():
        raise PlaybookError([f"{folder}: playbook folder not found"])
    problems: list[str] = []
    result = PlaybookSet()
    seen_actions: dict[str, str] = {}
    for path in sorted(folder.glob("*.yaml")):
        name = path.name
        result.files.append(name)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(f"{name}: cannot read: {exc.strerror}")
            continue
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problems.append(f"{name}:{where} not valid YAML: {getattr(exc, 'problem', exc)}")
            continue
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(f"{name}: the top level must be a mapping (actions, routes)")
            continue
        unknown = sorted(set(data) - {"actions", "routes"})
        if unknown:
            problems.append(f"{name}: unknown section {', '.join(unknown)} "
                            "(expected actions, routes)")
        raw_actions = data.get("actions") or {}
        raw_routes = data.get("routes") or []
        if not isinstance(raw_actions, dict):
            problems.append(f"{name}: actions must be a mapping of name -> action")
            raw_actions = {}
        if not isinstance(raw_routes, list):
            problems.append(f"{name}: routes must be a list")
            raw_routes = []
        for action_name, raw in raw_actions.items():
            where = f"{name}: actions.{action_name}"
            if not isinstance(action_name, str) or not _NAME.match(action_name):
                problems.append(f"{where}: bad name (letters, digits, . _ -; up to 63)")
                continue
            if action_name in seen_actions:
                problems.append(f"{where}: duplicate action name "
                                f"(also in {seen_actions[action_name]})")
                continue
            seen_actions[action_name] = name
            try:
                spec = ActionSpec.model_validate(raw if raw is not None else {})
            except pydantic.ValidationError as exc:
                problems.extend(f"{name}: {line}" for line in
                                _errors(exc, f"actions.{action_name}"))
                continue
            kind = action_type(spec.type)
            if kind is None:
                from playbooks.actions import ACTION_TYPES

                problems.append(f"{where}.type: unknown action type {spec.type!r}; known: "
                                + ", ".join(t.name for t in ACTION_TYPES))
                continue
            if any(isinstance(key, bool) for key in spec.params):
                problems.append(f"{where}.params: a key reads as a boolean (YAML turns on/off/"
                                "yes/no into true/false); the phase list is `phases`")
                continue
            try:
                params = kind.Params.model_validate(spec.params)
            except pydantic.ValidationError as exc:
                problems.extend(f"{name}: {line}" for line in
                                _errors(exc, f"actions.{action_name}.params"))
                continue
            if spec.requires_approval and kind.name == "slack":
                problems.append(f"{where}.requires_approval: a slack action cannot need "
                                "approval (approval requests are Slack messages)")
                continue
            result.actions[action_name] = BoundAction(
                action_name, kind(action_name, params), spec.requires_approval, spec.dry_run,
                name)
        for index, raw in enumerate(raw_routes):
            label = _route_label(index, raw)
            try:
                spec_r = RouteSpec.model_validate(raw)
            except pydantic.ValidationError as exc:
                problems.extend(f"{name}: {line}" for line in _errors(exc, label))
                continue
            if not _NAME.match(spec_r.name):
                problems.append(f"{name}: {label}.name: bad name")
                continue
            result.routes.append(Route(spec_r, name))
    # Cross references, once every file is read.
    route_names: dict[str, str] = {}
    for route in result.routes:
        where = f"{route.source}: routes ({route.name})"
        if route.name in route_names:
            problems.append(f"{where}: duplicate route name (also in {route_names[route.name]})")
        route_names.setdefault(route.name, route.source)
        for ref in route.spec.actions:
            if ref not in result.actions and ref not in seen_actions:
                problems.append(f"{where}.actions: unknown action {ref!r}")
    for route in result.routes:
        esc = route.spec.escalation
        if esc is None:
            continue
        where = f"{route.source}: routes ({route.name}).escalation.route"
        if esc.route not in route_names:
            problems.append(f"{where}: unknown route {esc.route!r}")
        elif esc.route == route.name:
            problems.append(f"{where}: a route cannot escalate to itself")
    if problems:
        raise PlaybookError(problems)
    return result
