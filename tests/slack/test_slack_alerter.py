"""SlackAlerter end to end: the real slack-sdk clients against the local fake Slack."""

from __future__ import annotations

import email.utils
import logging
import socket
import time
from typing import Any

import pytest
import structlog
from fake_slack import FakeSlack, Reply, SlackRequest

from detectors.findings import Entity
from playbooks.privacy import Pseudonymizer
from playbooks.slack import SlackAlerter

ROUTES = ["webhook", "web_api"]


def _texts(value: Any) -> list[str]:
    """Every string inside a parsed request body."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _texts(v)]
    if isinstance(value, list):
        return [s for v in value for s in _texts(v)]
    return []


def _gap(requests: list[SlackRequest], i: int) -> float:
    return requests[i].at - requests[i - 1].at


# -- delivery -----------------------------------------------------------------


def test_webhook_post_arrives_with_blocks(fake_slack, make_alerter, make_finding, outcomes):
    finding = make_finding(severity="critical")
    make_alerter("webhook").submit(finding)
    assert outcomes.wait_for(1) == ["sent"]
    [req] = fake_slack.requests
    assert req.endpoint == "webhook" and req.delivered
    body = req.body
    assert body["unfurl_links"] is False and body["unfurl_media"] is False
    assert body["text"].startswith("[CRITICAL] denial_of_service on principal `svc-batch`")
    types = [b["type"] for b in body["blocks"]]
    assert types[0] == "header" and types[-1] == "context" and "section" in types
    assert "CRITICAL" in body["blocks"][0]["text"]["text"]
    everything = "\n".join(_texts(body["blocks"]))
    for expected in (finding.finding_id, "volume.principal_rate", "fraud-scorer",
                     "observed_count: 1200", "AML.T0029"):
        assert expected in everything


def test_bot_token_post_uses_bearer_token_and_channel(fake_slack, make_alerter, make_finding,
                                                      outcomes):
    finding = make_finding()
    make_alerter("web_api").submit(finding)
    assert outcomes.wait_for(1) == ["sent"]
    [req] = fake_slack.requests
    assert req.endpoint == "chat.postMessage"
    assert req.headers["authorization"] == f"Bearer {fake_slack.token}"
    assert req.body["channel"] == "#ml-security"
    assert req.body["blocks"][0]["type"] == "header"
    assert finding.finding_id in "\n".join(_texts(req.body["blocks"]))


def test_below_threshold_is_reported_and_not_posted(fake_slack, make_alerter, make_finding,
                                                    outcomes):
    alerter = make_alerter("webhook", min_severity="high")
    alerter.submit(make_finding(severity="medium"))
    alerter.submit(make_finding(severity="critical"))
    assert sorted(outcomes.wait_for(2)) == ["below_threshold", "sent"]
    assert len(fake_slack.requests) == 1


# -- retries -------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_429_waits_retry_after_then_delivers(fake_slack, make_alerter, make_finding, outcomes,
                                             route):
    fake_slack.script(Reply.rate_limited(retry_after=1))
    make_alerter(route).submit(make_finding())
    assert outcomes.wait_for(1) == ["sent"]
    reqs = fake_slack.requests
    assert [r.status for r in reqs] == [429, 200]
    assert _gap(reqs, 1) >= 1.0


@pytest.mark.parametrize("route", ROUTES)
def test_429_with_http_date_retry_after_is_honoured(fake_slack, make_alerter, make_finding,
                                                    outcomes, route):
    # slack-sdk's own RateLimitErrorRetryHandler raises ValueError on this form.
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    fake_slack.script(Reply.rate_limited(retry_after=when))
    make_alerter(route).submit(make_finding())
    assert outcomes.wait_for(1) == ["sent"]
    reqs = fake_slack.requests
    assert [r.status for r in reqs] == [429, 200]
    assert _gap(reqs, 1) >= 1.5  # the date has whole seconds: at least 2 s minus transit


@pytest.mark.parametrize(("route", "status"),
                         [("webhook", 500), ("webhook", 503), ("web_api", 500), ("web_api", 502)])
def test_5xx_is_retried_then_delivered(fake_slack, make_alerter, make_finding, outcomes, route,
                                       status):
    fake_slack.script(Reply.server_error(status), Reply.server_error(status))
    make_alerter(route).submit(make_finding())
    assert outcomes.wait_for(1) == ["sent"]
    assert [r.status for r in fake_slack.requests] == [status, status, 200]


def test_transient_api_error_in_ok_false_is_retried(fake_slack, make_alerter, make_finding,
                                                    outcomes):
    fake_slack.script(Reply.failure("internal_error"))
    make_alerter("web_api").submit(make_finding())
    assert outcomes.wait_for(1) == ["sent"]
    assert len(fake_slack.requests) == 2


@pytest.mark.parametrize(("route", "reply", "code"), [
    ("web_api", Reply.failure("channel_not_found"), "channel_not_found"),
    ("web_api", Reply.failure("invalid_auth"), "invalid_auth"),
    ("web_api", Reply.failure("not_in_channel"), "not_in_channel"),
    ("webhook", Reply.failure("no_service"), "no_service"),
    ("webhook", Reply.failure("invalid_payload"), "invalid_payload"),
    ("webhook", Reply.failure("action_prohibited"), "action_prohibited"),
    ("webhook", Reply.failure("channel_is_archived"), "channel_is_archived"),
])
def test_permanent_error_fails_at_once(fake_slack, make_alerter, make_finding, outcomes, route,
                                       reply, code):
    with structlog.testing.capture_logs() as logs:
        alerter = make_alerter(route, max_retries=5)
        fake_slack.script(reply)
        alerter.submit(make_finding())
        assert outcomes.wait_for(1) == ["failed"]
    assert len(fake_slack.requests) == 1
    [failure] = [e for e in logs if e["event"] == "slack_alert_failed"]
    assert failure["error"] == code and failure["route"] == route


def test_wrong_bot_token_fails_with_invalid_auth(fake_slack, make_alerter, make_finding,
                                                 outcomes):
    with structlog.testing.capture_logs() as logs:
        make_alerter("web_api", bot_token="xoxb-wrong").submit(make_finding())
        assert outcomes.wait_for(1) == ["failed"]
    assert [e["error"] for e in logs if e["event"] == "slack_alert_failed"] == ["invalid_auth"]


@pytest.mark.parametrize(("route", "reply"), [
    ("webhook", Reply.server_error(503)),
    ("web_api", Reply.server_error(500)),
    ("web_api", Reply.rate_limited(retry_after=0)),
])
def test_retries_exhausted_is_reported_failed(fake_slack, make_alerter, make_finding, outcomes,
                                              route, reply):
    fake_slack.script(*[reply] * 10)
    make_alerter(route, max_retries=2).submit(make_finding())
    assert outcomes.wait_for(1) == ["failed"]
    assert len(fake_slack.requests) == 3  # the first try and two retries, no more
    assert fake_slack.pending_script == 7


def test_retry_after_beyond_the_cap_fails_instead_of_waiting(fake_slack, make_alerter,
                                                             make_finding, outcomes):
    fake_slack.script(Reply.rate_limited(retry_after=3600))
    started = time.monotonic()
    make_alerter("web_api").submit(make_finding())
    assert outcomes.wait_for(1) == ["failed"]
    assert time.monotonic() - started < 3
    assert len(fake_slack.requests) == 1


def test_unreachable_slack_is_retried_then_failed(make_finding, outcomes):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    alerter = SlackAlerter(webhook_url=f"http://127.0.0.1:{port}/services/T/B/x", bot_token=None,
                           channel=None, max_retries=2, retry_backoff_s=0.05,
                           on_outcome=outcomes)
    alerter.start()
    alerter.submit(make_finding())
    assert outcomes.wait_for(1) == ["failed"]
    assert alerter.stop(1) == 0


# -- dedup, queue, stop ----------------------------------------------------------


def test_duplicate_finding_id_is_posted_once(fake_slack, make_alerter, make_finding, outcomes):
    finding = make_finding()
    alerter = make_alerter("webhook")
    alerter.submit(finding)
    alerter.submit(finding)  # while the first is queued or in flight
    outcomes.wait_for(2)
    alerter.submit(finding)  # after it was sent
    assert sorted(outcomes.wait_for(3)) == ["duplicate", "duplicate", "sent"]
    assert alerter.stop(5) == 0
    assert len(fake_slack.requests) == 1


def test_failed_finding_is_posted_again_when_redelivered(fake_slack, make_alerter, make_finding,
                                                         outcomes):
    finding = make_finding()
    fake_slack.script(Reply.failure("no_service"))
    alerter = make_alerter("webhook")
    alerter.submit(finding)
    assert outcomes.wait_for(1) == ["failed"]
    alerter.submit(finding)
    assert outcomes.wait_for(2) == ["failed", "sent"]


def test_queue_overflow_is_reported_dropped_without_blocking(fake_slack, make_alerter,
                                                             make_finding, outcomes):
    fake_slack.script(Reply.slow(1.0))
    alerter = make_alerter("webhook", queue_size=2)
    alerter.submit(make_finding())
    fake_slack.wait_for_requests(1)  # the worker is now stuck on a slow Slack
    started = time.monotonic()
    for _ in range(5):
        alerter.submit(make_finding())
    assert time.monotonic() - started < 0.2  # submit never waits on Slack
    assert outcomes.outcomes == ["dropped"] * 3
    assert alerter.stop(5) == 0
    assert sorted(outcomes.outcomes) == ["dropped"] * 3 + ["sent"] * 3
    assert len(fake_slack.delivered) == 3


def test_stop_drains_queued_alerts(fake_slack, make_alerter, make_finding, outcomes):
    fake_slack.script(*[Reply.slow(0.1)] * 5)
    alerter = make_alerter("web_api", start=False)
    for _ in range(5):
        alerter.submit(make_finding())
    alerter.start()
    assert alerter.stop(timeout=10) == 0
    assert outcomes.outcomes == ["sent"] * 5
    assert len(fake_slack.delivered) == 5


def test_stop_gives_up_at_its_timeout_and_counts_the_rest(fake_slack, make_alerter, make_finding,
                                                          outcomes):
    fake_slack.script(Reply.rate_limited(retry_after=60))
    alerter = make_alerter("webhook")
    for _ in range(3):
        alerter.submit(make_finding())
    fake_slack.wait_for_requests(1)
    started = time.monotonic()
    assert alerter.stop(timeout=0.5) == 3
    assert time.monotonic() - started < 1.5
    assert sorted(outcomes.wait_for(3)) == ["dropped", "dropped", "failed"]
    assert len(fake_slack.requests) == 1  # the aborted retry was not sent


def test_submit_after_stop_is_dropped(fake_slack, make_alerter, make_finding, outcomes):
    alerter = make_alerter("webhook")
    alerter.stop(1)
    alerter.submit(make_finding())
    assert outcomes.outcomes == ["dropped"]
    assert fake_slack.requests == []


def test_a_failing_outcome_callback_does_not_stop_alerting(fake_slack, make_alerter,
                                                           make_finding):
    def broken(outcome: str, finding: object) -> None:
        raise RuntimeError("metrics down")

    with structlog.testing.capture_logs() as logs:
        alerter = make_alerter("webhook", on_outcome=broken)
        alerter.submit(make_finding())
        alerter.submit(make_finding())
        fake_slack.wait_for_delivered(2)
        assert alerter.stop(5) == 0
    assert [e["event"] for e in logs].count("slack_outcome_callback_failed") == 2


# -- what leaves -----------------------------------------------------------------

EVIL = "<!channel> <http://evil.example|click> <@U0BOSS>"


@pytest.mark.parametrize("route", ROUTES)
def test_attacker_chosen_principal_arrives_escaped(fake_slack, make_alerter, make_finding,
                                                   outcomes, route):
    finding = make_finding(entity=Entity("principal", EVIL), model_id="<!here>",
                           summary=f"{EVIL} sent 12x its usual rate",
                           evidence={"ratio": 12.0, "user_agent": "<!everyone>"})
    make_alerter(route).submit(finding)
    assert outcomes.wait_for(1) == ["sent"]
    [req] = fake_slack.requests
    texts = _texts(req.body)
    joined = "\n".join(texts)
    for live in ("<!channel>", "<!here>", "<!everyone>", "<http://evil", "<@U0BOSS>"):
        assert live not in joined
    assert "&lt;!channel&gt; &lt;http://evil.example|click&gt; &lt;@U0BOSS&gt;" in joined
    # The only Slack control sequences left are our own ATLAS links.
    assert all(chunk.startswith("https://atlas.mitre.org/")
               for text in texts for chunk in text.split("<")[1:])


@pytest.mark.parametrize("route", ROUTES)
def test_pseudonyms_replace_principals_and_ips(fake_slack, make_alerter, make_finding, outcomes,
                                               route):
    pseudonymizer = Pseudonymizer(b"test-key-0123456789")
    finding = make_finding(
        entity=Entity("principal", "alice.smith"),
        summary="alice.smith from 203.0.113.7 sent 12x the usual rate",
        evidence={"ratio": 12.0, "source_ip": "203.0.113.7",
                  "top_principals": [{"principal": "bob.jones", "count": 40}],
                  "principals": ["carol.white"]},
    )
    make_alerter(route, pseudonymizer=pseudonymizer).submit(finding)
    assert outcomes.wait_for(1) == ["sent"]
    [req] = fake_slack.requests
    everything = req.text_of_everything()
    for real in ("alice.smith", "203.0.113.7", "bob.jones", "carol.white"):
        assert real not in everything
    assert pseudonymizer.pseudonym("alice.smith") in everything
    assert pseudonymizer.pseudonym("203.0.113.7") in everything


def test_raw_feature_values_never_leave(fake_slack, make_alerter, make_finding, outcomes):
    finding = make_finding(evidence={
        "ratio": 12.0,
        "features": [31337.4242, 27182.8182],
        "feature_values": {"income": 98765.4321},
        "raw_input": "4111-1111-1111-1111",
        "payload": {"ssn": "078-05-1120"},
        "last_values": [55555.125, 66666.25],
        "note": "x" * 500,
        "psi": {"income": 0.42},
    })
    make_alerter("webhook").submit(finding)
    assert outcomes.wait_for(1) == ["sent"]
    everything = fake_slack.requests[0].text_of_everything()
    for raw in ("31337", "27182", "98765", "4111-1111", "078-05-1120", "55555", "66666", "x" * 80):
        assert raw not in everything
    assert "`income`=0.42" in everything  # statistics still arrive


def test_secrets_never_appear_in_logs(fake_slack, make_finding, outcomes, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    dead_webhook = f"http://127.0.0.1:{dead_port}/services/T1/B1/deadbeefsecret"
    token = "xoxb-super-secret-token-1234"
    with structlog.testing.capture_logs() as logs:
        alerters = [
            SlackAlerter(webhook_url=fake_slack.webhook_url, bot_token=None, channel=None,
                         max_retries=1, retry_backoff_s=0.01, on_outcome=outcomes),
            SlackAlerter(webhook_url=dead_webhook, bot_token=None, channel=None,
                         max_retries=1, retry_backoff_s=0.01, on_outcome=outcomes),
            SlackAlerter(webhook_url=None, bot_token=token, channel="#sec",
                         api_base_url=fake_slack.api_base_url, max_retries=1,
                         retry_backoff_s=0.01, on_outcome=outcomes),
        ]
        fake_slack.script(Reply.failure("no_service"), Reply.server_error(500),
                          Reply.server_error(500))
        for alerter in alerters:
            alerter.start()
            alerter.submit(make_finding())
            alerter.stop(5)
    assert outcomes.outcomes == ["failed"] * 3
    assert [e["event"] for e in logs].count("slack_alert_failed") == 3
    captured = repr(logs) + caplog.text + repr(alerters)
    webhook_secret = fake_slack.webhook_path.rsplit("/", 1)[1]
    for secret in (webhook_secret, "deadbeefsecret", token):
        assert secret not in captured
    assert "Failed to send a request" in caplog.text  # slack-sdk's own log, redacted, kept


def test_constructor_rejects_incomplete_config():
    with pytest.raises(ValueError, match="webhook_url or bot_token"):
        SlackAlerter(webhook_url=None, bot_token=None, channel=None)
    with pytest.raises(ValueError, match="channel"):
        SlackAlerter(webhook_url=None, bot_token="xoxb-1", channel=None)
    with pytest.raises(ValueError, match="min_severity"):
        SlackAlerter(webhook_url="http://127.0.0.1:1/services/x", bot_token=None, channel=None,
                     min_severity="urgent")


def test_fake_slack_fixture_is_reusable(fake_slack: FakeSlack):
    assert fake_slack.webhook_url.startswith("http://127.0.0.1:")
    assert fake_slack.api_base_url.endswith("/api/")
