"""The lab's Kafka clients come from one helper on the daemon's client settings."""

from __future__ import annotations

import ast
from pathlib import Path

from daemon.lab import clients
from daemon.sections_kafka import KafkaSettings

LAB = Path(__file__).resolve().parents[2] / "daemon" / "lab"
RAW = {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
#: Where a raw client may be built: the helper, and bench's baseline consumer.
ALLOWED = {("clients.py", "producer"), ("clients.py", "reader"), ("clients.py", "admin"),
           ("bench.py", "bare_consumer_rate")}


def raw_clients(folder: Path) -> set[tuple[str, str]]:
    """``(file, enclosing function)`` of every call to a kafka-python client class."""
    found: set[tuple[str, str]] = set()
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                        and node.func.id in RAW:
                    found.add((path.name, func.name))
    return found


def test_only_the_helper_and_the_bench_baseline_build_raw_clients() -> None:
    found = raw_clients(LAB)
    assert found <= ALLOWED, sorted(found - ALLOWED)
    assert ("bench.py", "bare_consumer_rate") in found  # the guard sees real calls


def test_the_guard_reports_a_raw_client(tmp_path: Path) -> None:
    (tmp_path / "demo.py").write_text(
        "def produce(b):\n    from kafka import KafkaProducer\n"
        "    return KafkaProducer(bootstrap_servers=b)\n")
    assert raw_clients(tmp_path) == {("demo.py", "produce")}


def test_lab_clients_carry_the_daemons_security_settings_and_their_own_id() -> None:
    kafka = KafkaSettings(bootstrap_servers="k1:9093,k2:9093", client_id="watch",
                          security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                          sasl_plain_username="svc", sasl_plain_password="s3cret",
                          ssl_cafile="/etc/ca.pem", reconnect_backoff_max_s=7.0)
    config = clients._config(kafka)
    assert config["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert config["client_id"] == "watch-lab"
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_password"] == "s3cret"
    assert config["ssl_cafile"] == "/etc/ca.pem"
    assert config["reconnect_backoff_max_ms"] == 7000


def test_a_bare_address_gets_the_default_settings_around_it() -> None:
    kafka = clients.lab_settings("127.0.0.1:9999")
    assert kafka.bootstrap_servers == "127.0.0.1:9999"
    assert kafka.security_protocol == "PLAINTEXT"
    assert clients._config("127.0.0.1:9999")["client_id"] == "mlwatchd-lab"
