"""The fake Slack's read API (conversations.history/.replies/.list) answers like Slack's.

Real slack-sdk clients against
the fake: paging, ``oldest``, metadata only with ``include_all_metadata``, a
channel name refused by ``conversations.history``, 429 with Retry-After, and a
post whose answer is lost after the message was shown.
"""

from __future__ import annotations

import http.client
import urllib.error

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web import WebClient

from daemon.lab.fake_slack import Reply

META = {"event_type": "mlwatchd_finding", "event_payload": {"key": "k1", "finding_id": "f1"}}


def _client(fake_slack, **kw) -> WebClient:
    return WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url,
                     retry_handlers=[], **kw)


def test_history_pages_newest_first_with_cursor_and_has_more(fake_slack):
    client = _client(fake_slack)
    posted = [client.chat_postMessage(channel="#sec", text=f"m{i}")["ts"] for i in range(5)]
    cid = fake_slack.channel_id("#sec")
    first = client.conversations_history(channel=cid, limit=2)
    assert [m["ts"] for m in first["messages"]] == posted[::-1][:2]
    assert first["has_more"] is True and first["response_metadata"]["next_cursor"]
    seen = [m["ts"] for m in first["messages"]]
    cursor = first["response_metadata"]["next_cursor"]
    while cursor:
        page = client.conversations_history(channel=cid, limit=2, cursor=cursor)
        seen += [m["ts"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
    assert seen == posted[::-1] and page["has_more"] is False
    newer = client.conversations_history(channel=cid, oldest=posted[2])
    assert [m["ts"] for m in newer["messages"]] == posted[:2:-1]  # oldest is exclusive
    with pytest.raises(SlackApiError) as err:
        client.conversations_history(channel=cid, cursor="not-a-cursor!")
    assert err.value.response["error"] == "invalid_cursor"


def test_history_needs_a_channel_id_and_shows_metadata_only_when_asked(fake_slack):
    client = _client(fake_slack)
    client.chat_postMessage(channel="#sec", text="x", metadata=META)
    with pytest.raises(SlackApiError) as err:
        client.conversations_history(channel="#sec")
    assert err.value.response.status_code == 200
    assert err.value.response["error"] == "channel_not_found"
    cid = fake_slack.channel_id("sec")
    assert "metadata" not in client.conversations_history(channel=cid)["messages"][0]
    [msg] = client.conversations_history(channel=cid, include_all_metadata=True)["messages"]
    assert msg["metadata"] == META
    listed = client.conversations_list(limit=1)
    assert listed["channels"][0] == {"id": cid, "name": "sec", "is_channel": True,
                                     "is_private": False, "is_archived": False,
                                     "is_member": True}


def test_replies_are_the_parent_then_the_thread_and_history_leaves_replies_out(fake_slack):
    client = _client(fake_slack)
    parent = client.chat_postMessage(channel="#sec", text="p")["ts"]
    reply = client.chat_postMessage(channel="#sec", text="r", thread_ts=parent,
                                    metadata=META)["ts"]
    cid = fake_slack.channel_id("#sec")
    assert [m["ts"] for m in client.conversations_history(channel=cid)["messages"]] == [parent]
    thread = client.conversations_replies(channel=cid, ts=parent, include_all_metadata=True)
    assert [m["ts"] for m in thread["messages"]] == [parent, reply]
    assert thread["messages"][1]["metadata"]["event_payload"]["key"] == "k1"
    with pytest.raises(SlackApiError) as err:
        client.conversations_replies(channel=cid, ts="1.000002")
    assert err.value.response["error"] == "thread_not_found"


def test_read_api_checks_auth_and_answers_scripted_429_with_retry_after(fake_slack):
    client = _client(fake_slack)
    client.chat_postMessage(channel="#sec", text="x")
    cid = fake_slack.channel_id("#sec")
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=fake_slack.api_base_url,
                  retry_handlers=[]).conversations_history(channel=cid)
    assert err.value.response["error"] == "invalid_auth"
    fake_slack.script(Reply(status=429, retry_after=3, endpoint="conversations.history"))
    assert client.chat_postMessage(channel="#sec", text="y")["ok"]  # not for a post
    with pytest.raises(SlackApiError) as err:
        client.conversations_history(channel=cid)
    assert err.value.response.status_code == 429
    assert err.value.response.headers["Retry-After"] == "3"
    assert err.value.response["error"] == "ratelimited"


def test_a_lost_answer_leaves_the_message_shown_and_the_client_without_an_answer(fake_slack):
    fake_slack.script(Reply.lost())
    client = _client(fake_slack, timeout=2)
    with pytest.raises((http.client.HTTPException, urllib.error.URLError, OSError)):
        client.chat_postMessage(channel="#sec", text="gone", metadata=META)
    [shown] = fake_slack.messages("#sec")
    assert shown["text"] == "gone" and shown["metadata"] == META
    assert len(fake_slack.delivered) == 1


def test_get_with_query_parameters_is_answered_like_a_post(fake_slack):
    import json
    import urllib.request

    WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url).chat_postMessage(
        channel="#sec", text="x")
    url = (fake_slack.api_base_url + "conversations.history?limit=1&channel="
           + fake_slack.channel_id("#sec"))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {fake_slack.token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
    assert body["ok"] and body["messages"][0]["text"] == "x"
    assert fake_slack.requests[-1].method == "GET"
