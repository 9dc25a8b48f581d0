"""The fake Slack's fault mode, as ``mlwatchd soak`` uses it: real slack-sdk, real HTTP."""

from __future__ import annotations

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from daemon.lab.fake_slack import FakeSlack


def _status(client: WebClient) -> tuple[int, str | None]:
    try:
        client.chat_postMessage(channel="#c", text="x")
    except SlackApiError as exc:
        return exc.response.status_code, exc.response.headers.get("Retry-After")
    return 200, None


@pytest.mark.parametrize(("mode", "expected"), [
    ("rate_limit", [429, 429, 429]),
    ("server_error", [500, 502, 503]),
    ("mixed", [429, 500, 429, 502]),
])
def test_fault_mode_answers_every_request_until_switched_off(mode, expected):
    with FakeSlack() as slack:
        client = WebClient(token=slack.token, base_url=slack.api_base_url, retry_handlers=[])
        slack.set_fault(mode, retry_after=3)
        got = [_status(client) for _ in expected]
        assert [s for s, _ in got] == expected
        assert all(ra == "3" for s, ra in got if s == 429)
        assert slack.faults_answered == len(expected) and not slack.delivered
        slack.set_fault(None)
        assert _status(client) == (200, None)
        assert len(slack.delivered) == 1


def test_scripted_replies_still_come_first():
    from daemon.lab.fake_slack import Reply

    with FakeSlack() as slack:
        client = WebClient(token=slack.token, base_url=slack.api_base_url, retry_handlers=[])
        slack.set_fault("server_error")
        slack.script(Reply())
        assert _status(client) == (200, None)
        assert _status(client)[0] == 500
