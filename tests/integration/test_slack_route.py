"""Findings reach Slack through the daemon: real broker, real slack-sdk, local fake Slack."""

from __future__ import annotations

import pytest

from daemon.cli import build_alerter
from tests.integration.kafka_helpers import DaemonThread, inference, make_settings, produce, \
    wait_for
from tests.slack.fake_slack import FakeSlack, Reply

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0
ATTACKER = "<!channel> mallory"


def _flood():
    events = []
    for i in range(60):
        for who in ("alice", ATTACKER):
            events.append((who.encode(), inference(T0 + i * 10, who, i)))
    events += [(ATTACKER.encode(), inference(T0 + 600 + i * 0.1, ATTACKER, 1000 + i))
               for i in range(300)]
    return events


@pytest.mark.parametrize("route", ["webhook", "bot_token"])
def test_findings_at_min_severity_are_posted_escaped_after_a_429(broker, route):
    with FakeSlack() as slack:
        slack_cfg = ({"webhook_url": slack.webhook_url} if route == "webhook" else
                     {"bot_token": slack.token, "channel": "#ml-sec",
                      "api_base_url": slack.api_base_url})
        settings = make_settings(broker, slack={**slack_cfg, "min_severity": "medium"})
        slack.script(Reply.rate_limited(retry_after=1))
        stream = _flood()
        produce(broker, settings.topics.inference, stream)
        outcomes: list[str] = []
        alerter = build_alerter(settings, lambda outcome, _f: outcomes.append(outcome))
        with DaemonThread(settings, alerter=alerter) as run:
            assert wait_for(lambda: run.daemon.processed >= len(stream))
            delivered = slack.wait_for_delivered(1, timeout=15)
        assert outcomes == ["sent"]
        assert len(slack.requests) == 2, "one 429, then the retry"
        assert slack.requests[1].at - slack.requests[0].at >= 0.9
        text = delivered[0].text_of_everything()
        assert "<!channel>" not in text and "&lt;!channel&gt;" in text
        assert "features" not in text
