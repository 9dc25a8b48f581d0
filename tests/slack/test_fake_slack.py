"""The fake Slack itself, so tests built on it can trust what it says."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from daemon.lab.fake_slack import FakeSlack, Reply


def _post(url: str, data: bytes, content_type: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_binds_to_loopback_on_a_free_port():
    with FakeSlack() as a, FakeSlack() as b:
        assert a.base_url.startswith("http://127.0.0.1:") and a.base_url != b.base_url


def test_chat_post_message_answers_fresh_ts_and_records_the_request(fake_slack):
    client = WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url)
    first = client.chat_postMessage(channel="#c", text="one", blocks=[{"type": "divider"}])
    second = client.chat_postMessage(channel="#c", text="two")
    assert first["ok"] and first["channel"] == fake_slack.channel_id("#c") \
        and first["ts"] != second["ts"]
    req = fake_slack.requests[0]
    assert req.endpoint == "chat.postMessage" and req.body["blocks"] == [{"type": "divider"}]
    assert len(fake_slack.wait_for_delivered(2)) == 2


def test_form_encoded_post_message_is_parsed_including_blocks(fake_slack):
    form = urllib.parse.urlencode({"channel": "#c", "text": "t",
                                   "blocks": json.dumps([{"type": "divider"}])}).encode()
    status, body = _post(fake_slack.api_base_url + "chat.postMessage", form,
                         "application/x-www-form-urlencoded",
                         {"Authorization": f"Bearer {fake_slack.token}"})
    assert status == 200 and json.loads(body)["ok"] is True
    assert fake_slack.requests[0].body["blocks"] == [{"type": "divider"}]


@pytest.mark.parametrize(("token", "channel", "error"), [
    (None, "#c", "not_authed"),
    ("xoxb-wrong", "#c", "invalid_auth"),
    ("good", "", "channel_not_found"),
])
def test_web_api_checks_token_and_channel(fake_slack, token, channel, error):
    headers = {} if token is None else {
        "Authorization": f"Bearer {fake_slack.token if token == 'good' else token}"}
    status, body = _post(fake_slack.api_base_url + "chat.postMessage",
                         json.dumps({"channel": channel, "text": "t"}).encode(),
                         "application/json", headers)
    assert status == 200 and json.loads(body) == {"ok": False, "error": error}
    assert not fake_slack.requests[0].delivered


def test_scripted_replies_answer_in_order_then_normal_behaviour_resumes(fake_slack):
    fake_slack.script(Reply.failure("channel_not_found"), Reply.rate_limited(retry_after=7))
    client = WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url,
                       retry_handlers=[])
    with pytest.raises(SlackApiError) as first:
        client.chat_postMessage(channel="#c", text="x")
    assert first.value.response["error"] == "channel_not_found"
    with pytest.raises(SlackApiError) as second:
        client.chat_postMessage(channel="#c", text="x")
    assert second.value.response.status_code == 429
    assert second.value.response.headers["Retry-After"] == "7"
    assert client.chat_postMessage(channel="#c", text="x")["ok"] is True


@pytest.mark.parametrize(("reply", "status", "body"), [
    (Reply(), 200, "ok"),
    (Reply.failure("invalid_payload"), 400, "invalid_payload"),
    (Reply.failure("action_prohibited"), 403, "action_prohibited"),
    (Reply.failure("no_service"), 404, "no_service"),
    (Reply.failure("channel_is_archived"), 410, "channel_is_archived"),
    (Reply.rate_limited(1), 429, "rate_limited"),
    (Reply.server_error(500), 500, "internal_error"),
])
def test_webhook_answers_like_slack(fake_slack, reply, status, body):
    fake_slack.script(reply)
    resp = WebhookClient(fake_slack.webhook_url, retry_handlers=[]).send(text="x")
    assert (resp.status_code, resp.body) == (status, body)


def test_webhook_on_another_path_is_no_service_and_bad_json_is_invalid_payload(fake_slack):
    assert WebhookClient(fake_slack.base_url + "/services/T0/B0/nope").send(text="x").body == \
        "no_service"
    assert _post(fake_slack.webhook_url, b"{not json", "application/json") == \
        (400, "invalid_payload")


def test_wait_for_times_out_with_a_clear_error(fake_slack):
    with pytest.raises(TimeoutError, match="1 requests"):
        fake_slack.wait_for_requests(1, timeout=0.1)


def test_threads_and_chat_update_need_an_earlier_message(fake_slack):
    client = WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url)
    parent = client.chat_postMessage(channel="#c", text="parent")
    reply = client.chat_postMessage(channel="#c", text="reply", thread_ts=parent["ts"])
    assert reply["ok"] and fake_slack.requests[1].body["thread_ts"] == parent["ts"]
    updated = client.chat_update(channel="#c", ts=parent["ts"], text="edited")
    assert updated["ok"] and fake_slack.requests[2].endpoint == "chat.update"
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="#c", text="x", thread_ts="1.000001")
    assert err.value.response["error"] == "thread_not_found"
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="#c", ts="1.000001", text="x")
    assert err.value.response["error"] == "message_not_found"


def test_interaction_is_a_signed_block_actions_form_like_slacks(fake_slack):
    import hashlib
    import hmac

    client = WebClient(token=fake_slack.token, base_url=fake_slack.api_base_url)
    button = {"type": "button", "action_id": "go", "value": "v-1",
              "text": {"type": "plain_text", "text": "Go"}}
    sent = client.chat_postMessage(channel="#c", text="t",
                                   blocks=[{"type": "actions", "elements": [button]}])
    headers, body = fake_slack.interaction(fake_slack.requests[0], "go", signing_secret="s",
                                           user_id="U1", timestamp=1_700_000_000)
    base = b"v0:1700000000:" + body
    assert headers["X-Slack-Signature"] == "v0=" + hmac.new(b"s", base, hashlib.sha256
                                                            ).hexdigest()
    payload = json.loads(urllib.parse.parse_qs(body.decode())["payload"][0])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U1"
    assert payload["actions"][0]["value"] == "v-1"
    assert payload["container"]["message_ts"] == sent["ts"]
    with pytest.raises(KeyError):
        fake_slack.interaction(fake_slack.requests[0], "missing", signing_secret="s")
