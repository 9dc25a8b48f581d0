"""Config sections of the Kafka side: ``kafka`` (clients), ``topics`` and ``input``
(how each input topic's messages are read)."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from daemon.formats import FORMATS
from daemon.sections import Section, none_if_off, read_secret_files

__all__ = ["InputFormatSettings", "InputSettings", "KafkaSettings", "TopicSettings"]

#: Room for a record's key, headers and framing above its value.
_RECORD_OVERHEAD: Final = 4096


class KafkaSettings(Section):
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
        return read_secret_files(data, ("sasl_plain_password",))

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


class InputFormatSettings(Section):
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


class InputSettings(Section):
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
        return none_if_off(value)


class TopicSettings(Section):
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
