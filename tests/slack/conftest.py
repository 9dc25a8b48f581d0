"""Fixtures for Slack tests: a running :class:`FakeSlack` and a finding builder.

The fake Slack itself is :mod:`daemon.lab.fake_slack` (see its module
docstring); other test folders import it from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from daemon.lab.fake_slack import FakeSlack
from detectors.findings import Entity, Finding, Source

__all__ = ["build_finding", "fake_slack", "make_finding"]

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
