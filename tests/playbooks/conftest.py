"""Fixtures for the response engine: engines on temp outboxes, receivers, recorders.

The fake Slack is the lab's (``daemon.lab.fake_slack``; real slack-sdk clients talk to it
over HTTP); helpers (findings, recorders, a webhook receiver that also serves
``POST /slack/interactions`` like the daemon will) are in ``pb_helpers``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pb_helpers import (
    PSEUDO_KEY,
    SIGNING_SECRET,
    Events,
    Receiver,
    write_playbooks,
)

from daemon.lab.fake_slack import FakeSlack
from playbooks.config import PlaybookSettings, SlackConnection
from playbooks.engine import ResponseEngine
from playbooks.privacy import Pseudonymizer


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as slack:
        yield slack


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def engine_factory(tmp_path: Path, fake_slack: FakeSlack) -> Iterator[Callable[..., Any]]:
    """``make(yaml, route="web_api"|"webhook"|None, start=True, slack_options=None, **settings)``.

    Returns (engine, events). Same ``outbox`` name -> same SQLite file (restarts).
    Test-length timings: ticks every 50 ms, retries after 50-200 ms.
    """
    made: list[ResponseEngine] = []

    def make(playbook_yaml: str, *, slack_route: str | None = "web_api", start: bool = True,
             publish: Any = None, outbox: str = "outbox.sqlite3", pseudonymize: bool = True,
             events: Events | None = None, slack_options: dict[str, Any] | None = None,
             **overrides: Any) -> tuple[ResponseEngine, Events]:
        playbooks = write_playbooks(tmp_path / "playbooks", playbook_yaml)
        data: dict[str, Any] = {
            "dir": str(tmp_path / "playbooks"),
            "outbox_path": str(tmp_path / outbox),
            "tick_interval": 0.05,
            "retry_backoff": 0.05,
            "retry_backoff_max": 0.2,
            "max_attempts": 5,
            "interactivity": {"enabled": True, "signing_secret": SIGNING_SECRET},
        }
        data.update(overrides)
        settings = PlaybookSettings.model_validate(data)
        slack = None
        if slack_route == "web_api":
            slack = SlackConnection(**{"bot_token": fake_slack.token, "channel": "#ml-security",
                                       "api_base_url": fake_slack.api_base_url,
                                       "timeout_s": 5.0, **(slack_options or {})})
        elif slack_route == "webhook":
            slack = SlackConnection(**{"webhook_url": fake_slack.webhook_url, "timeout_s": 5.0,
                                       **(slack_options or {})})
        events = events or Events()
        engine = ResponseEngine(
            playbooks, settings, slack=slack,
            pseudonymizer=Pseudonymizer(PSEUDO_KEY) if pseudonymize else None,
            publish=publish, on_event=events)
        made.append(engine)
        if start:
            engine.start()
        return engine, events

    yield make
    for engine in made:
        if not engine._closed:
            engine.stop(timeout=1.0)


@pytest.fixture
def interactivity() -> Iterator[Callable[[ResponseEngine], str]]:
    """Serve ``engine.handle_slack_interaction`` at POST /slack/interactions; returns the URL."""
    servers: list[Receiver] = []

    def serve(engine: ResponseEngine) -> str:
        server = Receiver(handler=engine.handle_slack_interaction)
        servers.append(server)
        return server.url + "/slack/interactions"

    yield serve
    for server in servers:
        server.close()


