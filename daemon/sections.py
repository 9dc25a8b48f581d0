"""Config sections other than Kafka's: detectors, incidents, Slack, privacy,
observability, state and bootstrap; one pydantic model per YAML section.

The Kafka side (``kafka``, ``topics``, ``input``) is :mod:`daemon.sections_kafka`;
the whole config and its loading (YAML, ``MLWATCHD_`` overrides, checks across
sections) is :mod:`daemon.settings`.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from detectors.incidents import IncidentPolicy
from detectors.registry import REGISTRY
from playbooks.config import read_secret_file

__all__ = [
    "BootstrapSettings",
    "DetectorSettings",
    "IncidentSettings",
    "ObservabilitySettings",
    "PrivacySettings",
    "Section",
    "SlackSettings",
    "StateSettings",
    "none_if_off",
    "read_secret_files",
]


class Section(BaseModel):
    """A YAML section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def none_if_off(value: Any) -> Any:
    """``""``, ``null``, ``none`` or ``off`` (an environment variable's way to say null) -> None."""
    if isinstance(value, str) and value.strip().lower() in ("", "null", "none", "off"):
        return None
    return value


def read_secret_files(data: Any, names: tuple[str, ...]) -> Any:
    """``<name>_file: PATH`` -> ``<name>: <file contents, stripped>``, for each name."""
    for name in names:
        data = read_secret_file(data, name)
    return data



class DetectorSettings(Section):
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


class IncidentSettings(Section):
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


class SlackSettings(Section):
    webhook_url: SecretStr | None = None
    bot_token: SecretStr | None = None
    channel: str | None = None
    api_base_url: str = "https://slack.com/api/"
    timeout_s: float = Field(10.0, gt=0)
    #: Which findings go to Slack, retries and rate limits: see playbooks.

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return read_secret_files(data, ("webhook_url", "bot_token"))

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


class PrivacySettings(Section):
    #: Replace principals and IPs by keyed HMAC pseudonyms in what leaves for chat/webhooks.
    pseudonymize: bool = False
    key: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return read_secret_files(data, ("key",))

    @model_validator(mode="after")
    def _key_when_on(self) -> PrivacySettings:
        if self.pseudonymize and (self.key is None or len(self.key.get_secret_value()) < 16):
            raise ValueError("pseudonymize needs key (at least 16 characters)")
        return self


class ObservabilitySettings(Section):
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
        return none_if_off(value)


class StateSettings(Section):
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
    #: Memory budget (MiB) of all detectors' per-entity state together, per
    #: process: when the tables' estimated size exceeds it, every detector's
    #: principal/model cap is lowered to one common count that fits and the
    #: least recently seen entries are evicted (``mlwatchd_state_evictions_total``).
    #: null: each detector's own caps only.
    max_state_mb: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        return read_secret_files(data, ("signing_key",))

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


class BootstrapSettings(Section):
    #: On a partition's first start (no checkpoint), read this many seconds of
    #: the input topics' retained history in learn-only mode (detectors learn,
    #: findings are dropped and counted) before judging live traffic; 0: off
    #: (the history is judged like live traffic, as before).
    history_s: float = Field(0.0, ge=0, le=366 * 86400)
