"""Configuration: a YAML file, overridden by ``MLWATCHD_`` environment variables.

Nesting in variable names uses ``__`` (``MLWATCHD_KAFKA__BOOTSTRAP_SERVERS``);
values of object or list fields are JSON. Secrets are ``SecretStr`` and can
also be read from files (``*_file`` keys), so they need never sit in the YAML.
:func:`load` returns the settings or raises :class:`ConfigError` with one line
per problem.

Why one module of ~600 lines: it is the whole config schema, one pydantic
model per YAML section plus the cross-field checks that need several
sections at once (topics vs formats vs state store), and reading it top to
bottom is how an operator or reviewer checks what a config key means. Split
across modules, each section would import the others for those checks.
Several people edit it at once; it stays one file until the input adapters
work settles.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from daemon.formats import FORMATS, FormatConfigError, make_format
from detectors.incidents import IncidentPolicy
from detectors.pipeline import DetectorSpec
from detectors.registry import REGISTRY, ParamsError, validate_params
from playbooks.config import PlaybookSettings, read_secret_file
from playbooks.model import PlaybookError, load_playbooks

__all__ = ["ConfigError", "Settings", "default_config_path", "load"]

ENV_PREFIX: Final = "MLWATCHD_"


class ConfigError(Exception):
    """A config that cannot run; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _read_secret_files(data: Any, names: tuple[str, ...]) -> Any:
    """``<name>_file: PATH`` -> ``<name>: <file contents, stripped>``, for each name."""
    for name in names:
        data = read_secret_file(data, name)
    return data


#: Room for a record's key, headers and framing above its value.
_RECORD_OVERHEAD: Final = 4096


class KafkaSettings(_Section):
    #: The daemon's consumer and findings producer: kafka-python (pure Python,
    #: the default) or confluent (librdkafka: ``pip install 'mlwatchd[confluent]'``).
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "mlwatchd"
    client_id: str = "mlwatchd"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: Kafka's defaults; tests and the embedded demo shorten them.
    session_timeout_ms: int = Field(45_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    max_poll_records: int = Field(2_000, ge=1)
    poll_timeout_ms: int = Field(500, ge=1)
    #: Kafka's default. Tansu (demo, tests) waits this long whenever one of the
    #: fetched partitions is empty, so the demo and the benchmark lower it.
    fetch_max_wait_ms: int = Field(500, ge=1)
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1024)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: Messages larger than this go to the dead-letter topic unread.
    max_message_bytes: int = Field(1_048_576, ge=64)
    #: The producer's largest record (set it to the brokers' message.max.bytes);
    #: null: max_message_bytes + 64 KiB, at least 1 MiB. A dead letter larger
    #: than this is sent cut down (headers keep its size and SHA-256).
    max_request_size: int | None = Field(None, ge=16 * 1024)
    #: Producer batching; the findings and DLQ producers share these.
    linger_ms: int = Field(20, ge=0)
    #: Longest wait between reconnect attempts when the broker is gone.
    reconnect_backoff_max_s: float = Field(30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _read_secret_files(data, ("sasl_plain_password",))

    @model_validator(mode="after")
    def _client_installed(self) -> KafkaSettings:
        if self.client == "confluent":
            try:
                import confluent_kafka  # noqa: F401
            except ImportError:
                raise ValueError("client confluent needs the confluent-kafka package, which "
                                 "is not installed: pip install 'mlwatchd[confluent]'") from None
        return self

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self

    @model_validator(mode="after")
    def _request_above_message(self) -> KafkaSettings:
        # A valid event is forwarded whole to the repartition topic, with headers.
        if self.max_request_size is not None \
                and self.max_request_size < self.max_message_bytes + _RECORD_OVERHEAD:
            raise ValueError(f"max_request_size must exceed max_message_bytes by at least "
                             f"{_RECORD_OVERHEAD} bytes (lower max_message_bytes to match "
                             f"the brokers' message.max.bytes)")
        return self

    @property
    def producer_max_request_size(self) -> int:
        """``max_request_size``, or its default derived from ``max_message_bytes``."""
        if self.max_request_size is not None:
            return self.max_request_size
        return max(self.max_message_bytes + 64 * 1024, 1_048_576)


#: Formats that join a request with its response (``join_group`` applies).
_JOINING: Final = ("kserve", "oip")


class InputFormatSettings(_Section):
    """How one input topic's messages are read: a format name and its options."""

    format: str = "contract"
    #: The format's own options (``mlwatchd formats`` in the README lists them);
    #: checked at start, one line per problem.
    options: dict[str, Any] = Field(default_factory=dict)
    #: Topics with the same ``join_group`` share one format instance per
    #: partition number, so a request on one topic and its response on another
    #: are joined (Seldon Core 2's ``.inputs`` / ``.outputs``). The topics must
    #: be co-partitioned: same partition count, same key (the request id).
    join_group: str | None = None

    @field_validator("format")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; known: {', '.join(sorted(FORMATS))}")
        return value


class InputSettings(_Section):
    """What the daemon accepts as an event beyond the contract's types."""

    #: Input topic -> its format. The contract's three topics (``topics``)
    #: are read as ``contract`` with their kind unless named here; any other
    #: topic named here is consumed too.
    formats: dict[str, InputFormatSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _join_groups(self) -> InputSettings:
        groups: dict[str, list[tuple[str, InputFormatSettings]]] = {}
        for topic, cfg in self.formats.items():
            if cfg.join_group is not None:
                groups.setdefault(cfg.join_group, []).append((topic, cfg))
        for group, members in groups.items():
            names = ", ".join(t for t, _ in members)
            if len(members) < 2:
                raise ValueError(f"join_group {group!r} names one topic only ({names})")
            if any(cfg.format not in _JOINING for _, cfg in members):
                raise ValueError(f"join_group {group!r}: only {', '.join(_JOINING)} topics join")
            first = members[0][1]
            if any((cfg.format, cfg.options) != (first.format, first.options)
                   for _, cfg in members[1:]):
                raise ValueError(f"join_group {group!r}: topics {names} need the same format "
                                 "and options (one instance reads them all)")
        return self

    #: Events whose ``ts`` is further ahead of the wall clock go to the
    #: dead-letter topic (``ts_out_of_range``); null: no bound. Detectors keep
    #: event-time clocks, so one event from next year would close every window.
    max_future_skew_s: float | None = Field(86_400.0, gt=0)
    #: Events older than this go to the dead-letter topic; null: no bound.
    #: (Outside 1970..2100 an event is refused whatever these say.)
    max_age_s: float | None = Field(10 * 365.25 * 86_400, gt=0)

    @field_validator("max_future_skew_s", "max_age_s", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        """``null``/``off`` from an environment variable switches a bound off."""
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none", "off"):
            return None
        return value


class TopicSettings(_Section):
    inference: str = "ml.inference"
    audit: str = "ml.audit"
    access: str = "ml.access"
    findings: str = "mlwatchd.findings"
    dlq: str = "mlwatchd.dlq"
    #: Internal: inference events re-keyed by ``model_id`` so that each model's
    #: model-scoped detectors (drift, confidence, performance, integrity) see
    #: all its traffic on one replica. Used when ``state.model_routing`` is
    #: ``repartition``; created if missing (as many partitions as inference).
    repartition: str = "mlwatchd.repartition"
    #: Internal: the context table (pipeline runs seen by the detectors, for
    #: every replica): compacted, signed with ``state.signing_key``, read whole
    #: by every replica; created if missing.
    context: str = "mlwatchd.context"
    #: Each finding also as an OCSF 1.8 Detection Finding on this topic, in the
    #: same acknowledged batch as the findings; empty: off.
    ocsf: str = ""

    def inputs(self) -> dict[str, str]:
        """Input topic -> event type it carries."""
        return {self.inference: "inference", self.audit: "audit", self.access: "access"}


class DetectorSettings(_Section):
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    #: Only these models' inference events (glob patterns on model_id); null: all.
    models: list[str] | None = None


def _http_url(value: str) -> None:
    """ValueError unless ``value`` is an http(s) URL with a host.

    The message never quotes the value: a webhook URL is a secret.
    """
    try:
        parts = urlsplit(value.strip())
        host = parts.hostname
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        shown = repr(parts.scheme) if parts.scheme and len(parts.scheme) <= 10 else "none"
        raise ValueError(f"must be an http:// or https:// URL (scheme: {shown})")
    if not host:
        raise ValueError("must be an http:// or https:// URL with a host")


class IncidentSettings(_Section):
    """One incident per (detector, entity): see detectors/incidents.py."""

    #: An incident stays open until its entity had no finding of the detector
    #: for this long (event time); its repeats are updates, not new findings.
    #: 0: incidents off (every finding goes out on its own).
    quiet_s: float = Field(86_400.0, ge=0)
    #: A repeat that does not raise the severity goes out (as an update) at
    #: most this often per incident (event time); 0: every repeat goes out.
    update_every_s: float = Field(3_600.0, ge=0)
    #: Open incidents kept per detector and process (least recently seen go first).
    max_open: int = Field(100_000, ge=1)
    #: Per detector ``quiet_s``, e.g. ``{access.model_change: 3600}``.
    quiet_s_by_detector: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_detectors(self) -> IncidentSettings:
        for name, value in self.quiet_s_by_detector.items():
            if name not in REGISTRY:
                raise ValueError(f"quiet_s_by_detector: unknown detector {name!r}")
            if not value >= 0:
                raise ValueError(f"quiet_s_by_detector.{name}: must be >= 0")
        return self

    def policy(self, detector: str) -> IncidentPolicy:
        return IncidentPolicy(quiet_s=self.quiet_s_by_detector.get(detector, self.quiet_s),
                              update_every_s=self.update_every_s, max_open=self.max_open)


class SlackSettings(_Section):
    webhook_url: SecretStr | None = None
    bot_token: SecretStr | None = None
    channel: str | None = None
    api_base_url: str = "https://slack.com/api/"
    timeout_s: float = Field(10.0, gt=0)
    #: Which findings go to Slack, retries and rate limits: see playbooks.

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _read_secret_files(data, ("webhook_url", "bot_token"))

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _http_url(value.get_secret_value())
        return value

    @field_validator("api_base_url")
    @classmethod
    def _api_base_url(cls, value: str) -> str:
        _http_url(value)
        return value

    @model_validator(mode="after")
    def _channel_with_token(self) -> SlackSettings:
        if self.bot_token is not None and not self.channel:
            raise ValueError("channel is required with bot_token")
        return self

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None or self.bot_token is not None


class PrivacySettings(_Section):
    #: Replace principals and IPs by keyed HMAC pseudonyms in what leaves for chat/webhooks.
    pseudonymize: bool = False
    key: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _read_secret_files(data, ("key",))

    @model_validator(mode="after")
    def _key_when_on(self) -> PrivacySettings:
        if self.pseudonymize and (self.key is None or len(self.key.get_secret_value()) < 16):
            raise ValueError("pseudonymize needs key (at least 16 characters)")
        return self


class ObservabilitySettings(_Section):
    #: Serves /metrics, /healthz and /readyz; port 0 picks a free one, null disables.
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(9308, ge=0, le=65535)
    #: Slack's interactivity POSTs (playbooks.interactivity) on a listener of
    #: their own, so the port exposed to Slack serves nothing else and metrics
    #: and health stay internal; null: they are served on ``http_port``.
    interactivity_host: str | None = None  # null: http_host
    interactivity_port: int | None = Field(None, ge=0, le=65535)
    #: Requests handled at once per listener (more get a 503 at once), and at
    #: most a quarter of them from one client address.
    http_max_connections: int = Field(32, ge=4, le=1024)
    #: A request (line, headers and body) must arrive within this many seconds.
    http_request_timeout_s: float = Field(10.0, gt=0, le=300)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    #: /healthz fails when the consumer loop has not turned for this long.
    stall_after_s: float = Field(120.0, gt=0)

    @field_validator("http_port", "interactivity_port", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        """``null``/``off`` from an environment variable disables the server."""
        if isinstance(value, str) and value.strip().lower() in ("", "null", "none", "off"):
            return None
        return value


class StateSettings(_Section):
    #: ``local``: checkpoints as files under ``dir`` (one process, or replicas
    #: sharing a volume). ``kafka``: checkpoints in the compacted ``topic``, so
    #: replicas on different hosts hand state over (needs ``signing_key``).
    store: Literal["local", "kafka"] = "local"
    #: Where detector checkpoints live (store ``local``; one file per partition)
    #: and the response outbox; null with store ``local``: baselines are
    #: relearned after every restart.
    dir: str | None = None
    #: Checkpoint at most this often (and always on revocation and shutdown); a
    #: crash replays at most this much traffic to rebuild state.
    checkpoint_every_s: float = Field(60.0, gt=0)
    #: Store ``kafka``: the compacted state topic (created if missing).
    topic: str = "mlwatchd.state"
    #: HMAC-SHA256 key (or ``signing_key_file``), at least 16 characters,
    #: authenticating checkpoints (required with store ``kafka``; with store
    #: ``local`` the files are signed when it is set) and the audit records
    #: replicas read from each other. What fails the check is not loaded.
    signing_key: SecretStr | None = None
    #: Store ``kafka``: checkpoints are split into messages of at most this size.
    chunk_bytes: int = Field(512 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: How model-scoped detectors see a model's traffic. ``local``: each process
    #: sees what it consumes (right for one replica). ``repartition``: inference
    #: events are re-keyed by model through ``topics.repartition``, so each
    #: model is watched by one replica whatever the partitioning (right for
    #: several). ``auto``: ``repartition`` with store ``kafka``, else ``local``.
    model_routing: Literal["auto", "local", "repartition"] = "auto"
    #: Repartitioned model stage with a store: a model's events from several
    #: input partitions are merged in event-time order (daemon/align.py), so a
    #: run under faults gives the findings of a clean run. A source partition
    #: that has sent nothing for this long (wall clock) is not waited for; 0
    #: waits for none. Held events are part of the checkpointed state. The
    #: default outlasts a killed forwarder's handoff under Kafka's default
    #: 45 s session timeout; it delays a model's findings only while one of
    #: its source partitions is quiet.
    model_stage_max_wait_s: float = Field(60.0, ge=0, le=600)
    #: At most this many events held per model partition; over it the oldest
    #: go on unaligned (counted in ``mlwatchd_model_stage_forced_total``); 0: no alignment.
    model_stage_max_buffered: int = Field(20_000, ge=0, le=1_000_000)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return _read_secret_files(data, ("signing_key",))

    @model_validator(mode="after")
    def _key_with_kafka(self) -> StateSettings:
        if self.store == "kafka" and self.signing_key is None:
            raise ValueError("store kafka needs signing_key (at least 16 characters)")
        if self.signing_key is not None and len(self.signing_key.get_secret_value()) < 16:
            raise ValueError("signing_key must have at least 16 characters")
        return self

    @property
    def repartitioned(self) -> bool:
        """True when model-scoped detectors consume the repartition topic."""
        if self.model_routing == "auto":
            return self.store == "kafka"
        return self.model_routing == "repartition"


class BootstrapSettings(_Section):
    #: On a partition's first start (no checkpoint), read this many seconds of
    #: the input topics' retained history in learn-only mode (detectors learn,
    #: findings are dropped and counted) before judging live traffic; 0: off
    #: (the history is judged like live traffic, as before).
    history_s: float = Field(0.0, ge=0, le=366 * 86400)


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
