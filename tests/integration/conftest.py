"""Integration fixtures: the Kafka client the daemon runs on (issue #16)."""

from __future__ import annotations

import importlib.util

import pytest

CLIENTS = ["kafka-python", "confluent"]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    """``kafka.client`` for the daemon under test: each test runs on both transports."""
    if request.param == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
        pytest.skip("confluent-kafka is not installed (pip install 'mlwatchd[confluent]')")
    return str(request.param)
