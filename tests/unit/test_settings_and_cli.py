"""Config loading, env overrides, check-config and replay through the CLI."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from daemon.cli import main
from daemon.settings import ConfigError, default_config_path, load

T0 = 1_767_225_600.0


def test_shipped_default_config_is_valid():
    settings = load(default_config_path())
    assert settings.kafka.group_id == "mlwatchd"
    assert settings.topics.findings == "mlwatchd.findings" and settings.topics.dlq == "mlwatchd.dlq"
    assert settings.detector_specs()


def test_environment_overrides_file_including_nested_detector_params(monkeypatch, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka: {bootstrap_servers: 'file:1'}\n"
                   "detectors: {volume.principal_rate: {params: {min_count: 5}}}\n")
    monkeypatch.setenv("MLWATCHD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    monkeypatch.setenv("MLWATCHD_SLACK__WEBHOOK_URL", "http://127.0.0.1:1/hook")
    monkeypatch.setenv("MLWATCHD_DETECTORS__VOLUME_PRINCIPAL_RATE__PARAMS__MIN_COUNT", "9")
    settings = load(cfg)
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.slack.webhook_url.get_secret_value() == "http://127.0.0.1:1/hook"
    assert "127.0.0.1:1" not in repr(settings.slack)
    spec = next(s for s in settings.detector_specs() if s.name == "volume.principal_rate")
    assert int(spec.params["min_count"]) == 9


def test_secrets_can_come_from_files(tmp_path):
    token = tmp_path / "token"
    token.write_text("xoxb-from-file\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"slack: {{bot_token_file: {token}, channel: '#sec'}}\n")
    assert load(cfg).slack.bot_token.get_secret_value() == "xoxb-from-file"


def test_bad_config_reports_one_line_per_problem(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "kafka: {session_timeout_ms: soon, nonsense: 1}\n"
        "slack: {bot_token: xoxb-very-secret}\n"
        "detectors: {volume.principal_rate: {params: {min_count: many}}, no.such: {}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load(cfg)
    problems = err.value.problems
    assert len(problems) == 5, problems
    joined = "\n".join(problems)
    for needle in ("kafka.session_timeout_ms", "kafka.nonsense", "channel is required",
                   "detectors.volume.principal_rate: min_count", "unknown detector 'no.such'"):
        assert needle in joined
    assert "xoxb-very-secret" not in joined


def test_check_config_cli_exit_codes(tmp_path, capsys):
    assert main(["check-config"]) == 0
    assert "config OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [not, a, mapping\n")
    with pytest.raises(SystemExit) as exit_:
        main(["check-config", "--config", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid YAML" in err[0]


def _flood_lines():
    lines = []
    for i in range(60):
        for who in ("alice", "mallory"):
            lines.append({"event_type": "inference", "ts": T0 + i * 10, "model_id": "m",
                          "request_id": f"{who}{i}", "principal": who, "features": [1.0],
                          "prediction": 0})
    for i in range(300):
        lines.append({"event_type": "inference", "ts": (T0 + 600 + i * 0.1) * 1000,
                      "model_id": "m", "request_id": f"b{i}", "principal": "mallory",
                      "features": {"x": 1.0}, "prediction": "yes"})
    return lines


def test_replay_prints_findings_only_on_stdout_and_survives_bad_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps(x) for x in _flood_lines()]
    lines.insert(5, b"{broken json")
    lines.insert(9, b'{"event_type": "audit", "ts": 1}')
    path.write_bytes(b"\n".join(lines) + b"\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detectors: {volume.principal_rate: {params: {warmup_buckets: 3, "
                   "min_count: 30}}}\n")
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "replay", "--config", str(cfg),
                          str(path)], capture_output=True, timeout=60, check=True)
    findings = [orjson.loads(line) for line in run.stdout.splitlines()]
    assert len(findings) == 1
    assert findings[0]["entity"] == {"type": "principal", "id": "mallory"}
    assert findings[0]["sources"][0]["topic"] == str(path)
    assert run.stderr.count(b'"event": "bad_line"') == 2
    again = subprocess.run([sys.executable, "-m", "daemon.cli", "replay", "--config", str(cfg),
                            str(path)], capture_output=True, timeout=60, check=True)
    assert again.stdout == run.stdout, "replay is deterministic, finding ids stable"


def test_replay_missing_file_is_a_clear_error(tmp_path):
    run = subprocess.run([sys.executable, "-m", "daemon.cli", "replay", str(tmp_path / "x")],
                         capture_output=True, timeout=60)
    assert run.returncode == 2 and b"no such file" in run.stderr


def test_misspelt_environment_variables_are_reported(monkeypatch):
    monkeypatch.setenv("MLWATCHD_KAFKA__BOOTSTRAP_SERVER", "typo:9092")  # missing S
    monkeypatch.setenv("MLWATCHD_SLAK__CHANNEL", "#x")
    monkeypatch.setenv("MLWATCHD_KAFKA__GROUP_ID", "fine")
    with pytest.raises(ConfigError) as err:
        load(default_config_path())
    assert sorted(err.value.problems) == [
        "MLWATCHD_SLAK__CHANNEL: no config section 'slak' (check the spelling)",
        "kafka.bootstrap_server: Extra inputs are not permitted (got 'typo:9092')",
    ]


def test_a_detector_can_be_limited_to_some_models(tmp_path):
    from detectors.events import InferenceEvent
    from detectors.findings import Source
    from detectors.pipeline import Pipeline

    cfg = tmp_path / "c.yaml"
    cfg.write_text("detectors: {volume.principal_rate: {models: ['fraud-*'], params: "
                   "{warmup_buckets: 3, min_count: 30}}}\n")
    pipeline = Pipeline(load(cfg).detector_specs())

    def flood(model):
        items = []
        for i in range(60):
            items.append((InferenceEvent(ts=T0 + i * 10, model_id=model, request_id=str(i),
                                         principal="mallory", features=[1.0], prediction=0),
                          Source("t", 0, i)))
        for i in range(300):
            items.append((InferenceEvent(ts=T0 + 600 + i * 0.1, model_id=model,
                                         request_id=f"f{i}", principal="mallory",
                                         features=[1.0], prediction=0), Source("t", 0, 60 + i)))
        return pipeline.process_many("inference", 0, items)

    assert flood("churn") == [], "churn is not in the detector's models"
    assert [f.model_id for f in flood("fraud-scorer")] == ["fraud-scorer"]
