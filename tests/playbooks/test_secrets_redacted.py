"""Issue #12 item 13: secrets are masked by value wherever they turn up; bad URLs fail at start.

Before: slack-sdk's ``SlackRequestError`` quotes the webhook URL, and that text
went to the log (with a traceback), the outbox's ``last_error`` and the audit
topic; ``check-config`` accepted ``htp://``; the log's key-name masking hid
``idempotency_key``.
"""

from __future__ import annotations

import json
import logging

import pytest
import structlog
from pb_helpers import Events, Published, build_finding, wait_until, write_playbooks

from daemon.cli import main
from daemon.logs import configure_logging
from playbooks.config import PlaybookSettings, SlackConnection
from playbooks.engine import ResponseEngine
from playbooks.redact import MASK, REDACTOR, Redactor

TOKEN = "T0SECRET/B0SECRET/xoxsecretsecret42"
BAD_URL = f"htp://hooks.example.com/services/{TOKEN}"

CHAT = """
actions:
  chat: {type: slack}
routes:
  - name: extraction
    match: {kinds: [model_extraction]}
    actions: [chat]
"""


def test_a_slack_error_quoting_the_webhook_url_leaks_it_nowhere(tmp_path):
    playbooks = write_playbooks(tmp_path / "pb", CHAT)
    settings = PlaybookSettings.model_validate(
        {"dir": str(tmp_path / "pb"), "outbox_path": str(tmp_path / "o.sqlite3"),
         "tick_interval": 0.05})
    published, events = Published(), Events()
    # Not through the daemon's settings (which refuse htp:// now): the engine alone.
    engine = ResponseEngine(playbooks, settings, slack=SlackConnection(webhook_url=BAD_URL),
                            publish=published, on_event=events)
    try:
        with structlog.testing.capture_logs() as logs:
            engine.start()
            engine.submit(build_finding())
            [failed] = events.wait_for("action_failed")
            audit = wait_until(lambda: [a for a in published.on("mlwatchd.audit")
                                        if a["event"] == "action_failed"])
        [job] = engine.outbox.jobs()
    finally:
        engine.stop(0.5)
    assert "slack refused the request" in job["last_error"]
    everything = json.dumps([job, audit, published.records, logs, failed], default=str)
    assert "xoxsecretsecret42" not in everything
    assert MASK in job["last_error"]
    # Identifiers are not secrets: the idempotency key stays readable.
    assert audit[0]["idempotency_key"].endswith(":extraction:chat")


def test_the_daemon_log_masks_secrets_by_value_even_in_tracebacks(capsys):
    secret = "https://hooks.slack.com/services/T1/B1/abcdefghijklmnop"
    REDACTOR.add(secret)
    configure_logging("info", "json")
    try:
        log = structlog.get_logger("test")
        try:
            raise ValueError(f"cannot open {secret}")
        except ValueError:
            log.exception("boom", idempotency_key="f1:route:chat", bot_token="xoxb-1",
                          detail=f"posting to {secret}")
        err = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    line = json.loads(err.strip().splitlines()[-1])
    assert "abcdefghijklmnop" not in err
    assert line["idempotency_key"] == "f1:route:chat"
    assert line["bot_token"] == "**********"
    assert MASK in line["detail"] and MASK in line["exception"]


def test_playbook_action_secrets_are_fed_to_the_redactor(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_URL", "https://soar.example.com/hooks/abc123tokenxyz")
    monkeypatch.setenv("HOOK_SECRET", "hmac-secret-value-1")
    monkeypatch.setenv("PD_KEY", "pd-routing-key-0042")
    playbooks = write_playbooks(tmp_path / "pb", """
actions:
  soar:
    type: webhook
    params:
      url_env: HOOK_URL
      secret_env: HOOK_SECRET
      headers: {Authorization: "Bearer header-token-77"}
  page:
    type: pagerduty
    params: {routing_key_env: PD_KEY}
routes:
  - name: all
    actions: [soar, page]
""")
    settings = PlaybookSettings.model_validate(
        {"dir": str(tmp_path / "pb"), "outbox_path": str(tmp_path / "o.sqlite3")})
    engine = ResponseEngine(playbooks, settings)
    try:
        text = ("POST https://soar.example.com/hooks/abc123tokenxyz failed; "
                "Authorization: Bearer header-token-77; key pd-routing-key-0042; "
                "hmac-secret-value-1; idempotency_key=f1:all:soar")
        shown = engine.redactor.text(text)
    finally:
        engine.stop(0.1)
    for secret in ("abc123tokenxyz", "header-token-77", "pd-routing-key-0042",
                   "hmac-secret-value-1"):
        assert secret not in shown
    assert "idempotency_key=f1:all:soar" in shown


def test_redactor_masks_url_paths_and_encoded_forms_but_not_short_values():
    r = Redactor(["https://hooks.slack.com/services/T/B/zzzzzzzzzz", "short", None])
    assert r.text("POST /services/T/B/zzzzzzzzzz 404") == f"POST {MASK} 404"
    assert "zzzzzzzzzz" not in r.text("url=https%3A%2F%2Fhooks.slack.com%2Fservices%2FT%2FB"
                                      "%2Fzzzzzzzzzz")
    assert r.text("a short note") == "a short note"
    assert r.redact({"a": ["x https://hooks.slack.com/services/T/B/zzzzzzzzzz"], "n": 1}) == \
        {"a": [f"x {MASK}"], "n": 1}


@pytest.mark.parametrize("url, problem", [
    ("htp://hooks.slack.com/services/T/B/sekrit-value", "scheme: 'htp'"),
    ("https:///services/T/B/sekrit-value", "with a host"),
    ("hooks.slack.com/services/T/B/sekrit-value", "scheme: none"),
])
def test_check_config_refuses_a_bad_slack_url_in_one_line_without_quoting_it(
        monkeypatch, capsys, url, problem):
    monkeypatch.setenv("MLWATCHD_SLACK__WEBHOOK_URL", url)
    monkeypatch.setenv("MLWATCHD_SLACK__API_BASE_URL", "ftp://slack.example.com/api/")
    with pytest.raises(SystemExit) as exit_:
        main(["check-config"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("config error: slack.webhook_url: must be an http")
    assert problem in lines[0]
    assert lines[1] == ("config error: slack.api_base_url: must be an http:// or https:// "
                        "URL (scheme: 'ftp')")
    assert "sekrit-value" not in err


def test_the_slack_sdk_log_filter_masks_with_the_process_redactor() -> None:
    import logging

    from playbooks.config import SlackConnection
    from playbooks.redact import REDACTOR
    from playbooks.slack_post import SlackPoster

    url = "https://hooks.slack.com/services/T0H23/B0H23/slack-sdk-filter-secret"
    poster = SlackPoster(SlackConnection(webhook_url=url, timeout_s=1.0))
    # One redactor: what the sdk filter masks, structlog's processor masks too.
    assert REDACTOR.text(f"POST {url} failed") == "POST <redacted> failed"
    record = logging.LogRecord("slack_sdk", logging.WARNING, __file__, 1,
                               "retrying %s", (url,), None)
    assert poster.redactor.filter(record)
    assert record.getMessage() == "retrying <redacted>"
