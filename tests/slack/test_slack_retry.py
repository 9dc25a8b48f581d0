"""Retry-After parsing, and why slack-sdk's own handler is not enough."""

from __future__ import annotations

import email.utils

import pytest
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from daemon.lab.fake_slack import Reply
from playbooks.slack_retry import retry_after_seconds


@pytest.mark.parametrize(("value", "seconds"), [
    ("0", 0.0), ("7", 7.0), ("2.5", 2.5), ("-3", 0.0),
    ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
    ("Wed, 21 Oct 2015 07:28:10 -0000", 10.0),
    ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ("", None), ("soon", None), ("inf", None),
])
def test_retry_after_parses_seconds_and_http_dates(value, seconds):
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert retry_after_seconds(value, now=now) == seconds


def test_stock_sdk_handler_breaks_on_http_date_which_is_why_we_have_ours(fake_slack):
    fake_slack.script(Reply.rate_limited(retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    client = WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url,
                       retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    with pytest.raises(ValueError):
        client.chat_postMessage(channel="#c", text="x")
