"""Fixtures for Slack tests: a running :class:`FakeSlack` and a finding builder.

Other test folders can reuse them with ``pytest_plugins`` or by importing
``fake_slack`` (see the module docstring there).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_slack import FakeSlack

from detectors.findings import Entity, Finding, Source
from playbooks.slack import SlackAlerter

__all__ = ["OutcomeLog", "build_finding", "fake_slack", "make_alerter", "make_finding",
           "outcomes"]

_counter = iter(range(1, 1_000_000))


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    """A started fake Slack on 127.0.0.1; stopped after the test."""
    with FakeSlack() as slack:
        yield slack


def build_finding(**overrides: Any) -> Finding:
    """A valid high-severity finding; each call gets a fresh id unless ``sources`` is given."""
    args: dict[str, Any] = {
        "detector": "volume.principal_rate",
        "kind": "denial_of_service",
        "severity": "high",
        "entity": Entity("principal", "svc-batch"),
        "model_id": "fraud-scorer",
        "summary": "svc-batch sent 12x its usual request rate",
        "evidence": {"observed_count": 1200, "window_seconds": 60, "ratio": 12.0},
        "atlas": ["AML.T0029"],
        "event_ts": 1_700_000_000.0,
        "sources": [Source("ml.inference", 0, next(_counter))],
    }
    args.update(overrides)
    return Finding.build(**args)


@pytest.fixture
def make_finding() -> Callable[..., Finding]:
    """``make_finding(**overrides)`` -> a valid finding (see :func:`build_finding`)."""
    return build_finding


class OutcomeLog:
    """Collects ``on_outcome`` calls from any thread; tests wait on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: list[tuple[str, str]] = []  # (outcome, finding_id)

    def __call__(self, outcome: str, finding: Finding) -> None:
        with self._cond:
            self.calls.append((outcome, finding.finding_id))
            self._cond.notify_all()

    @property
    def outcomes(self) -> list[str]:
        with self._cond:
            return [o for o, _ in self.calls]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        """Block until ``count`` outcomes were reported; returns them all."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= count, timeout):
                raise TimeoutError(f"only {len(self.calls)} outcomes: {self.calls}")
            return [o for o, _ in self.calls]


@pytest.fixture
def outcomes() -> OutcomeLog:
    return OutcomeLog()


@pytest.fixture
def make_alerter(
    fake_slack: FakeSlack, outcomes: OutcomeLog
) -> Iterator[Callable[..., SlackAlerter]]:
    """``make_alerter(route="webhook"|"web_api", start=True, **kwargs)`` against the fake.

    Fast retry backoff, outcomes into the ``outcomes`` fixture; every alerter
    is stopped after the test.
    """
    made: list[SlackAlerter] = []

    def make(route: str = "webhook", *, start: bool = True, **kwargs: Any) -> SlackAlerter:
        args: dict[str, Any] = {
            "webhook_url": fake_slack.webhook_url if route == "webhook" else None,
            "bot_token": fake_slack.token if route == "web_api" else None,
            "channel": "#ml-security" if route == "web_api" else None,
            "api_base_url": fake_slack.api_base_url,
            "timeout_s": 5.0,
            "max_retries": 3,
            "retry_backoff_s": 0.05,
            "on_outcome": outcomes,
        }
        args.update(kwargs)
        alerter = SlackAlerter(**args)
        made.append(alerter)
        if start:
            alerter.start()
        return alerter

    yield make
    for alerter in made:
        alerter.stop(timeout=1.0)
