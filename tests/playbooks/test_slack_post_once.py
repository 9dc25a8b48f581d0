"""A chat alert whose outcome is unknown is looked for before it is sent again (issue #15.1).

The fake Slack takes the post (the message is shown) and then loses the answer:
it drops the connection, answers after the client's timeout, or the posting
process is killed with SIGKILL while it waits. With a bot token the next
attempt finds the message by its metadata (``conversations.history`` /
``conversations.replies``) and does not post again; the counter-tests turn the
lookup off (``check_before_resend=False``) and see the duplicate, and a webhook
(no read API) repeats the post, as the README says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pb_helpers import build_finding, wait_until

from daemon.lab.fake_slack import Reply
from detectors.findings import Entity, Finding, encode_finding

PLAYBOOK = """
actions:
  chat: {type: slack}
routes:
  - name: extraction
    match: {kinds: [model_extraction], min_severity: high}
    actions: [chat]
    dedup: {key: "{kind}:{entity.id}", window: 30m}
    realert: 100ms
"""


def _posts(fake_slack) -> list:
    return [r for r in fake_slack.delivered if r.endpoint == "chat.postMessage"]


def _lookups(fake_slack) -> list:
    return [r for r in fake_slack.requests if r.endpoint.startswith("conversations.")]


@pytest.mark.parametrize("lost", ["dropped", "timeout"])
def test_a_post_whose_answer_was_lost_is_found_not_posted_twice(engine_factory, fake_slack,
                                                               lost):
    fake_slack.script(Reply.lost() if lost == "dropped" else
                      Reply(delay_s=2.0, endpoint="chat.postMessage"))
    engine, events = engine_factory(PLAYBOOK, slack_options={"timeout_s": 0.5})
    finding = build_finding()
    engine.submit(finding)
    [done] = events.wait_for("action_delivered")
    assert events.of("action_retry")  # the first attempt had no answer
    [post] = _posts(fake_slack)
    payload = post.body["metadata"]["event_payload"]
    assert payload == {"key": done["idempotency_key"], "finding_id": finding.finding_id}
    names = [r.endpoint for r in _lookups(fake_slack)]
    assert names == ["conversations.list", "conversations.history"]
    history = _lookups(fake_slack)[-1].body
    assert history["channel"] == fake_slack.channel_id("#ml-security")
    assert str(history["include_all_metadata"]).lower() in ("1", "true")
    assert float(history["oldest"]) <= float(fake_slack.messages("#ml-security")[0]["ts"])
    [job] = engine.outbox.jobs()
    result = json.loads(job["result"])
    assert result["found"] is True and result["ts"] == fake_slack.messages("#ml-security")[0]["ts"]
    time.sleep(0.3)
    assert len(_posts(fake_slack)) == 1


def test_without_the_lookup_the_lost_answer_is_posted_twice(engine_factory, fake_slack):
    fake_slack.script(Reply.lost())
    engine, events = engine_factory(PLAYBOOK, slack_options={"check_before_resend": False})
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    assert len(_posts(fake_slack)) == 2 and not _lookups(fake_slack)


def test_a_webhook_cannot_look_and_repeats_a_post_whose_answer_was_lost(engine_factory,
                                                                        fake_slack):
    fake_slack.script(Reply.lost(endpoint="webhook"))
    engine, events = engine_factory(PLAYBOOK, slack_route="webhook")
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    assert len(fake_slack.delivered) == 2  # the limit the README states


def test_an_answered_refusal_is_resent_without_a_lookup(engine_factory, fake_slack):
    fake_slack.script(Reply.rate_limited(retry_after=0), Reply.server_error(503))
    engine, events = engine_factory(PLAYBOOK)
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    assert len(_posts(fake_slack)) == 1 and not _lookups(fake_slack)


def test_a_refusal_after_a_lost_answer_keeps_the_lookup(engine_factory, fake_slack):
    # Lost, then the lookup is rate limited: that answer says nothing about the
    # first post, so the third attempt must still look before posting.
    fake_slack.script(Reply.lost(),
                      Reply(status=429, retry_after=0, endpoint="conversations.history"))
    engine, events = engine_factory(PLAYBOOK, slack_options={"timeout_s": 1.0})
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    assert len(_posts(fake_slack)) == 1
    assert [r.status for r in _lookups(fake_slack) if r.endpoint == "conversations.history"
            ][-1] == 200


def test_thread_replies_are_looked_for_in_the_thread_and_the_channel_id_is_cached(
        engine_factory, fake_slack):
    engine, events = engine_factory(PLAYBOOK)
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    fake_slack.script(Reply.lost())
    engine.submit(build_finding())  # same incident: a repeat notice into the thread
    events.wait_for("action_delivered", count=2)
    posts = _posts(fake_slack)
    assert len(posts) == 2 and posts[1].body["thread_ts"] == posts[0].body.get(
        "thread_ts", fake_slack.messages("#ml-security")[0]["ts"])
    # The channel id came from the first post's answer: no conversations.list.
    assert [r.endpoint for r in _lookups(fake_slack)] == ["conversations.replies"]
    assert _lookups(fake_slack)[0].body["ts"] == posts[1].body["thread_ts"]


def test_a_channel_the_token_cannot_read_is_posted_and_said_once(engine_factory, fake_slack):
    fake_slack.script(Reply.lost(), Reply(error="missing_scope", endpoint="conversations.list"))
    engine, events = engine_factory(PLAYBOOK)
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    assert len(_posts(fake_slack)) == 2  # a repeat, never a lost alert


def _kill_mid_post(tmp_path: Path, fake_slack, check: bool) -> Finding:
    folder = tmp_path / "playbooks"
    folder.mkdir(exist_ok=True)
    (folder / "test.yaml").write_text(PLAYBOOK)
    finding_file = tmp_path / "finding.bin"
    finding = build_finding(entity=Entity("principal", "mallory"))
    finding_file.write_bytes(encode_finding(finding))
    fake_slack.script(Reply(delay_s=10.0, endpoint="chat.postMessage"))
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("engine_child.py")), str(folder),
         str(tmp_path / "outbox.sqlite3"), fake_slack.api_base_url, fake_slack.token,
         str(finding_file), "check" if check else "off"])
    try:
        wait_until(lambda: _posts(fake_slack), timeout=30.0)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    return finding


@pytest.mark.parametrize("check", [True, False])
def test_a_process_killed_mid_post_does_not_post_again_after_restart(
        tmp_path, engine_factory, fake_slack, check):
    finding = _kill_mid_post(tmp_path, fake_slack, check)
    engine, events = engine_factory(PLAYBOOK, slack_options={"check_before_resend": check})
    engine.submit(finding)  # the consumer redelivers the uncommitted batch too
    events.wait_for("action_delivered")
    time.sleep(0.3)
    assert len(_posts(fake_slack)) == (1 if check else 2)
