"""Settings of the response engine (the daemon's ``playbooks:`` section).

:class:`PlaybookSettings` is a plain pydantic model with ``extra="forbid"``, so
the daemon can nest it in its own settings and every field is overridable from
the environment like the rest (``MLWATCHD_PLAYBOOKS__DRY_RUN=true``,
``MLWATCHD_PLAYBOOKS__INTERACTIVITY__SIGNING_SECRET_FILE=/run/secrets/slack-signing``).

:class:`SlackConnection` is how the engine reaches Slack; build it from the
daemon's existing ``SlackSettings`` with :meth:`SlackConnection.from_settings`
(any object with ``webhook_url``, ``bot_token``, ``channel``, ``api_base_url``,
``timeout_s``, ``max_retries`` attributes; secrets may be ``SecretStr``).

Durations are seconds (a number) or text such as ``90s``, ``15m``, ``2h``, ``1d``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)

__all__ = [
    "Duration",
    "InteractivitySettings",
    "PlaybookSettings",
    "SlackConnection",
    "default_playbook_dir",
    "parse_duration",
    "read_secret_file",
]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``30``, ``"30s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"250ms"``.

    >>> parse_duration("15m"), parse_duration(2.5), parse_duration("250ms")
    (900.0, 2.5, 0.25)
    """
    if isinstance(value, bool):
        raise ValueError("a duration is seconds or text like 15m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"not a duration: {value!r} (seconds, or e.g. 90s, 15m, 2h, 1d)")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


#: A pydantic field type: seconds as a float, written as a number or ``15m``.
Duration = Annotated[float, BeforeValidator(parse_duration)]


def default_playbook_dir() -> Path:
    """The shipped ``config/playbooks``: the source tree's, else the installed copy.

    Same rule as the daemon's ``config_dir()``; repeated here because
    playbooks/ never imports daemon/.
    """
    here = Path(__file__).resolve().parent.parent / "config"
    if (here / "mlwatchd.yaml").is_file():
        return here / "playbooks"
    return Path(sys.prefix) / "share" / "mlwatchd" / "config" / "playbooks"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def read_secret_file(data: Any, name: str) -> Any:
    """``<name>_file: PATH`` in a raw section -> ``<name>: <file contents, stripped>``."""
    if not isinstance(data, dict):
        return data
    path = data.pop(f"{name}_file", None)
    if path and not data.get(name):
        try:
            data[name] = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from None
    return data


class InteractivitySettings(_Section):
    """Slack's interactivity callbacks (Approve / Deny / Acknowledge buttons)."""

    #: Off: no buttons are posted; approvals can only expire.
    enabled: bool = False
    #: The Slack app's signing secret (or ``signing_secret_file``).
    signing_secret: SecretStr | None = None
    #: Where the daemon's HTTP server accepts Slack's POSTs.
    path: str = "/slack/interactions"
    #: Slack user ids allowed to approve, deny or acknowledge; empty: anyone who sees the message.
    allowed_users: list[str] = Field(default_factory=list)
    #: Requests whose timestamp is further than this from now are refused (replays).
    max_age_s: float = Field(300.0, gt=0, le=300.0)

    @model_validator(mode="before")
    @classmethod
    def _secret_file(cls, data: Any) -> Any:
        return read_secret_file(dict(data) if isinstance(data, dict) else data, "signing_secret")

    @model_validator(mode="after")
    def _secret_when_on(self) -> InteractivitySettings:
        if self.enabled and (
            self.signing_secret is None or not self.signing_secret.get_secret_value()
        ):
            raise ValueError("interactivity.enabled needs signing_secret (or signing_secret_file)")
        if not self.path.startswith("/"):
            raise ValueError("interactivity.path must start with /")
        return self


class PlaybookSettings(_Section):
    """The response engine's knobs; the playbooks themselves live in ``dir``."""

    enabled: bool = True
    #: Folder of playbook YAML files (``*.yaml``, read in name order).
    dir: Path = Field(default_factory=default_playbook_dir)
    #: Global dry run: every action is rendered and audited, none is sent.
    dry_run: bool = False
    #: SQLite file holding the outbox, idempotency keys, incidents, timers, approvals.
    outbox_path: Path = Path("mlwatchd-playbooks.sqlite3")
    #: Glob, in the outbox's directory, of other replicas' outboxes whose undelivered
    #: jobs this replica takes over once their owner is gone (its lock free), e.g.
    #: ``outbox-*.sqlite3`` with one outbox per replica (null: never; see README).
    adopt_outboxes: str | None = Field(None, pattern=r"^[^/\\]+$")
    actions_topic: str = "mlwatchd.actions"
    audit_topic: str = "mlwatchd.audit"
    interactivity: InteractivitySettings = Field(
        default_factory=lambda: InteractivitySettings.model_validate({}))
    #: Threads delivering actions (one slow destination does not hold the others up).
    workers: int = Field(2, ge=1, le=16)
    #: Attempts per action before it is reported failed...
    max_attempts: int = Field(12, ge=1)
    #: ...or when it has been waiting this long, whichever comes first.
    give_up_after: Duration = 86_400.0
    #: First wait after a failed attempt; doubles up to ``retry_backoff_max``.
    retry_backoff: Duration = 2.0
    retry_backoff_max: Duration = 300.0
    #: A Retry-After longer than this is capped (the action is retried then).
    retry_after_max: Duration = 900.0
    #: Pending approvals are cancelled (``expired``) after this long.
    approval_timeout: Duration = 3600.0
    #: How often timers (TTL reverts, escalations, resolves, summaries) are checked.
    tick_interval: Duration = 1.0
    #: Delivered idempotency keys and closed incidents are forgotten after this long.
    retention: Duration = 7 * 86_400.0
    #: Pseudonymise principals and IPs in Slack, webhooks and PagerDuty (needs a pseudonymizer).
    pseudonymize: bool = True


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return str(value) or None


@dataclass(frozen=True, repr=False)
class SlackConnection:
    """How to reach Slack: an incoming webhook, or a bot token plus default channel."""

    webhook_url: str | None = None
    bot_token: str | None = None
    channel: str | None = None
    api_base_url: str = "https://slack.com/api/"
    timeout_s: float = 10.0
    #: Kept for the daemon's ``SlackSettings``; the engine's outbox owns retries
    #: (``PlaybookSettings.max_attempts``), so requests are sent once per attempt.
    max_retries: int = 0
    #: Bot token: before re-sending a post whose outcome is unknown, look for it
    #: in the channel (see :mod:`playbooks.slack_post`). Off: it is sent again.
    check_before_resend: bool = True

    def __post_init__(self) -> None:
        if self.bot_token and not self.channel:
            raise ValueError("channel is required with bot_token")

    @classmethod
    def from_settings(cls, settings: Any) -> SlackConnection | None:
        """From the daemon's ``SlackSettings`` (or any look-alike); None if not configured."""
        if settings is None:
            return None
        if isinstance(settings, SlackConnection):
            return settings
        get = settings.get if isinstance(settings, dict) else lambda k, d=None: getattr(
            settings, k, d)
        webhook, token = _secret(get("webhook_url")), _secret(get("bot_token"))
        if not webhook and not token:
            return None
        return cls(
            webhook_url=webhook,
            bot_token=token,
            channel=get("channel"),
            api_base_url=get("api_base_url") or "https://slack.com/api/",
            timeout_s=float(get("timeout_s") or 10.0),
            max_retries=int(get("max_retries") or 0),
        )

    @property
    def web_api(self) -> bool:
        """A bot token: threads, chat.update and error codes are available."""
        return bool(self.bot_token)

    def secrets(self) -> list[str]:
        return [s for s in (self.webhook_url, self.bot_token) if s]

    def __repr__(self) -> str:
        route = "web_api" if self.bot_token else "webhook"
        return f"SlackConnection(route={route!r}, channel={self.channel!r})"
