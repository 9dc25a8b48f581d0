"""Findings reach Slack through the daemon and the playbook engine.

Real broker, real slack-sdk, a local stand-in for Slack; the interactivity
endpoint is served by the daemon's own HTTP server.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from daemon.lab.fake_slack import FakeSlack, Reply
from daemon.metrics import Metrics
from daemon.response import build_response
from tests.integration.kafka_helpers import (
    DaemonThread,
    inference,
    make_settings,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0
ATTACKER = "<!channel> mallory"

PLAYBOOK = """
actions:
  chat:
    type: slack
    params: {}
routes:
  - name: floods
    match: {kinds: [denial_of_service], min_severity: medium}
    actions: [chat]
    dedup: {key: "{kind}:{entity.id}", window: 30m}
"""


def _flood():
    events = []
    for i in range(60):
        for who in ("alice", ATTACKER):
            events.append((who.encode(), inference(T0 + i * 10, who, i)))
    events += [(ATTACKER.encode(), inference(T0 + 600 + i * 0.1, ATTACKER, 1000 + i))
               for i in range(300)]
    return events


@pytest.mark.parametrize("route", ["webhook", "bot_token"])
def test_findings_are_posted_escaped_after_a_429(broker, tmp_path, route):
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "floods.yaml").write_text(PLAYBOOK)
    with FakeSlack() as slack:
        slack_cfg = ({"webhook_url": slack.webhook_url} if route == "webhook" else
                     {"bot_token": slack.token, "channel": "#ml-sec",
                      "api_base_url": slack.api_base_url})
        settings = make_settings(
            broker, slack=slack_cfg, state={"dir": str(tmp_path / "state")},
            playbooks={"dir": str(tmp_path / "pb"), "retry_backoff": 0.2,
                       "interactivity": {"enabled": True, "signing_secret": "s" * 32}},
            observability={"http_port": 0})
        slack.script(Reply.rate_limited(retry_after=1))
        stream = _flood()
        produce(broker, settings.topics.inference, stream)
        metrics = Metrics()
        response = build_response(settings, metrics)
        with DaemonThread(settings, alerter=response, metrics=metrics) as run:
            assert wait_for(lambda: run.daemon.processed >= len(stream))
            delivered = slack.wait_for_delivered(1, timeout=20)
            # The daemon serves Slack's interactivity endpoint; a forged click is refused.
            request = urllib.request.Request(
                f"http://127.0.0.1:{run.daemon.status.port}/slack/interactions",
                data=b"payload=%7B%7D", headers={"X-Slack-Signature": "v0=forged",
                                                 "X-Slack-Request-Timestamp": "1"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 401
        assert len(slack.requests) == 2, "one 429, then the retry"
        assert slack.requests[1].at - slack.requests[0].at >= 0.9
        text = delivered[0].text_of_everything()
        assert "<!channel>" not in text and "&lt;!channel&gt;" in text
        assert "features" not in text
        assert metrics.playbook_events.labels("action_delivered")._value.get() == 1
