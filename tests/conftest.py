"""Shared fixtures: an embedded Tansu broker per test session."""

from __future__ import annotations

import os
import tempfile

import pytest

from daemon.lab.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker():
    """A real Kafka-protocol broker (Tansu) on a free loopback port."""
    log = os.path.join(tempfile.gettempdir(), f"mlwatchd-test-tansu-{os.getpid()}.log")
    with EmbeddedBroker(log_path=log) as running:
        yield running
