"""Retry-After parsing and the abortable handlers, against the fake Slack."""

from __future__ import annotations

import email.utils
import threading
import time

import pytest
from fake_slack import Reply
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from playbooks.slack_retry import retry_after_seconds, retry_handlers


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


def test_our_handlers_retry_a_past_http_date_at_once(fake_slack):
    fake_slack.script(Reply.rate_limited(retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    client = WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url,
                       retry_handlers=retry_handlers(2, threading.Event(), web_api=True))
    started = time.monotonic()
    assert client.chat_postMessage(channel="#c", text="x")["ok"] is True
    assert time.monotonic() - started < 1.0
    assert [r.status for r in fake_slack.requests] == [429, 200]


def test_abort_cuts_a_retry_after_wait_short_and_stops_retrying(fake_slack):
    abort = threading.Event()
    fake_slack.script(Reply.rate_limited(retry_after=30))
    client = WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url,
                       retry_handlers=retry_handlers(5, abort, web_api=True))
    threading.Timer(0.3, abort.set).start()
    started = time.monotonic()
    with pytest.raises(Exception, match="ratelimited"):
        client.chat_postMessage(channel="#c", text="x")
    assert time.monotonic() - started < 2
    assert len(fake_slack.requests) == 1
