"""``kafka.client`` (issue #16): which transport, and a clear error when it cannot load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from daemon.settings import ConfigError, KafkaSettings, load


def test_kafka_python_is_the_default() -> None:
    assert KafkaSettings().client == "kafka-python"


def test_confluent_without_the_package_fails_at_start_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # import raises ImportError
    config = tmp_path / "mlwatchd.yaml"
    config.write_text("kafka:\n  client: confluent\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(config)
    lines = [line for line in caught.value.problems if "confluent" in line]
    assert len(lines) == 1, caught.value.problems
    assert lines[0].startswith("kafka: ") and "pip install 'mlwatchd[confluent]'" in lines[0]


def test_an_unknown_client_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "mlwatchd.yaml"
    config.write_text("kafka:\n  client: librdkafka\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert any(line.startswith("kafka.client:") for line in caught.value.problems), \
        caught.value.problems
