"""Configuration: a YAML file, overridden by ``MLWATCHD_`` environment variables.

Nesting in variable names uses ``__`` (``MLWATCHD_KAFKA__BOOTSTRAP_SERVERS``);
values of object or list fields are JSON. Secrets are ``SecretStr`` and can
also be read from files (``*_file`` keys), so they need never sit in the YAML.
:func:`load` returns the settings or raises :class:`ConfigError` with one line
per problem.

The sections' models are :mod:`daemon.sections_kafka` (``kafka``, ``topics``,
``input``) and :mod:`daemon.sections` (the others); this module puts them
together and loads them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.formats import FormatConfigError, make_format
from daemon.sections import (
    BootstrapSettings,
    DetectorSettings,
    IncidentSettings,
    ObservabilitySettings,
    PrivacySettings,
    SlackSettings,
    StateSettings,
)
from daemon.sections_kafka import InputFormatSettings, InputSettings, KafkaSettings, TopicSettings
from detectors.pipeline import DetectorSpec
from detectors.registry import REGISTRY, ParamsError, validate_params
from playbooks.config import PlaybookSettings
from playbooks.model import PlaybookError, load_playbooks

__all__ = [
    "BootstrapSettings",
    "ConfigError",
    "DetectorSettings",
    "IncidentSettings",
    "InputFormatSettings",
    "InputSettings",
    "KafkaSettings",
    "ObservabilitySettings",
    "PrivacySettings",
    "Settings",
    "SlackSettings",
    "StateSettings",
    "TopicSettings",
    "default_config_path",
    "load",
]

ENV_PREFIX: Final = "MLWATCHD_"


class ConfigError(Exception):
    """A config that cannot run; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems



class Settings(BaseSettings):
    """Everything mlwatchd reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    input: InputSettings = Field(default_factory=InputSettings)
    #: Absent: every registered detector with its defaults; ``{}``: none.
    detectors: dict[str, DetectorSettings] = Field(
        default_factory=lambda: {name: DetectorSettings() for name in REGISTRY})
    incidents: IncidentSettings = Field(default_factory=IncidentSettings)
    slack: SlackSettings = Field(default_factory=SlackSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    state: StateSettings = Field(default_factory=StateSettings)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)
    playbooks: PlaybookSettings = Field(default_factory=PlaybookSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (the file arrives as init kwargs).
        return (env_settings, init_settings)

    @model_validator(mode="before")
    @classmethod
    def _detector_names(cls, data: Any) -> Any:
        return _normalise_detector_names(data)

    def input_formats(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Input topic -> (format name, options): the contract's topics, then ``input.formats``."""
        topics = self.topics
        out: dict[str, tuple[str, dict[str, Any]]] = {
            topic: ("contract", {"event_type": kind}) for topic, kind in topics.inputs().items()
        }
        for topic, cfg in self.input.formats.items():
            out[topic] = (cfg.format, dict(cfg.options))
        return out

    def input_join_groups(self) -> dict[str, str]:
        """Input topic -> its ``join_group``, for the topics that have one."""
        return {topic: cfg.join_group for topic, cfg in self.input.formats.items()
                if cfg.join_group is not None}

    def detector_specs(self) -> list[DetectorSpec]:
        return [
            DetectorSpec(name, dict(cfg.params),
                         tuple(cfg.models) if cfg.models is not None else None,
                         self.incidents.policy(name))
            for name, cfg in self.detectors.items()
            if cfg.enabled
        ]


def _normalise_detector_names(data: Any) -> Any:
    """Accept ``volume_principal_rate`` for ``volume.principal_rate`` (env var names)."""
    if isinstance(data, dict) and isinstance(data.get("detectors"), dict):
        by_env_name = {name.replace(".", "_"): name for name in REGISTRY}
        merged: dict[str, Any] = {}
        for key, value in data["detectors"].items():
            name = by_env_name.get(key.lower(), key)
            if name in merged and isinstance(merged[name], dict) and isinstance(value, dict):
                merged[name] = _deep_merge(merged[name], value)
            else:
                merged[name] = value
        data = {**data, "detectors": merged}
    return data


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_dir() -> Path:
    """The shipped config/ folder: the source tree's, else the installed copy."""
    here = Path(__file__).resolve().parent.parent / "config"
    if (here / "mlwatchd.yaml").is_file():
        return here
    return Path(sys.prefix) / "share" / "mlwatchd" / "config"


def default_config_path() -> Path:
    """The commented default config shipped with the package."""
    return config_dir() / "mlwatchd.yaml"


def _problem_lines(exc: pydantic.ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or "secret" in where or "password" in where \
            or "token" in where or "key" in where or "url" in where else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown if err['type'] != 'missing' else ''}")
    return lines


def load(path: str | Path | None) -> Settings:
    """Settings from ``path`` (default config if None) plus environment overrides."""
    source = Path(path) if path is not None else default_config_path()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read config: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{source}:{where} not valid YAML: {getattr(exc, 'problem', exc)}"]) \
            from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of sections"])
    problems: list[str] = unknown_env_settings(os.environ)
    settings: Settings | None = None
    try:
        settings = Settings(**data)
    except pydantic.ValidationError as exc:
        problems.extend(_problem_lines(exc))
    except ValueError as exc:
        problems.append(str(exc))
    detectors = settings.detectors if settings is not None else _raw_detectors(data)
    for name, cfg in detectors.items():
        try:
            validate_params(name, cfg.params)
        except ParamsError as exc:
            problems.extend(f"detectors.{name}: {line}" for line in exc.problems)
    problems.extend(_input_format_problems(settings, data))
    if settings is not None and settings.playbooks.enabled:
        try:
            load_playbooks(settings.playbooks.dir)
        except PlaybookError as exc:
            problems.extend(f"playbooks: {line}" for line in exc.problems)
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def _input_format_problems(settings: Settings | None, data: dict[str, Any]) -> list[str]:
    """Each ``input.formats`` entry's options checked by its format; output topics refused.

    Without valid settings, the entries that parse on their own are checked
    (against the file's topic names), so every problem shows in one run.
    """
    if settings is not None:
        formats, topics, state = settings.input.formats, settings.topics, settings.state.topic
    else:
        formats = _raw_sections(InputFormatSettings,
                                (data.get("input") or {}).get("formats")
                                if isinstance(data.get("input"), dict) else None)
        topics = next(iter(_raw_sections(TopicSettings, {"t": data.get("topics") or {}})
                           .values()), TopicSettings())
        state = StateSettings.model_fields["topic"].default
    outputs = {topics.findings: "findings", topics.dlq: "dlq", topics.repartition: "repartition",
               state: "state"}
    if topics.ocsf:
        outputs[topics.ocsf] = "ocsf"
    problems: list[str] = []
    for topic, cfg in formats.items():
        where = f"input.formats.{topic}"
        if not topic.strip():
            problems.append(f"{where}: a topic name is required")
        if topic in outputs:
            problems.append(f"{where}: is the {outputs[topic]} topic, which mlwatchd writes")
        try:
            make_format(cfg.format, cfg.options)
        except FormatConfigError as exc:
            problems.extend(f"{where}: {line}" for line in str(exc).splitlines())
    return problems


_Model = TypeVar("_Model", bound=BaseModel)


def _raw_sections(model: type[_Model], raw: Any) -> dict[str, _Model]:
    """The entries of a mapping that parse on their own (the others are reported already)."""
    out: dict[str, _Model] = {}
    for name, cfg in raw.items() if isinstance(raw, dict) else ():
        try:
            out[str(name)] = model.model_validate(cfg or {})
        except pydantic.ValidationError:
            continue
    return out


def unknown_env_settings(environ: Mapping[str, str]) -> list[str]:
    """``MLWATCHD_`` variables whose section does not exist.

    pydantic-settings drops them without a word (unknown keys *inside* a
    section are rejected by the section's ``extra="forbid"``), so a typo such
    as ``MLWATCHD_SLAK__CHANNEL`` would leave the daemon on its defaults.
    """
    problems = []
    for name in sorted(environ):
        if name.upper().startswith(ENV_PREFIX):
            section = name[len(ENV_PREFIX):].split("__", 1)[0].lower()
            if section not in Settings.model_fields:
                problems.append(f"{name}: no config section {section!r} (check the spelling)")
    return problems


def _raw_detectors(data: dict[str, Any]) -> dict[str, DetectorSettings]:
    """Detector sections that parse on their own, to report their params too."""
    raw = _normalise_detector_names({"detectors": data.get("detectors")}).get("detectors")
    out: dict[str, DetectorSettings] = {}
    for name, cfg in (raw or {}).items() if isinstance(raw, dict) else ():
        try:
            out[name] = DetectorSettings.model_validate(cfg or {})
        except pydantic.ValidationError:
            continue  # already reported by the settings validation
    return out
