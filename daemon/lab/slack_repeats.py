"""How often a chat alert is posted twice when Slack's answer is lost (issue #15 item 1).

``python -m daemon.lab.slack_repeats [--alerts N] [--lost P] [--seed S]`` runs a
response engine against the fake Slack, once with a bot token and once with an
incoming webhook. Each post's answer is lost with probability P after Slack
took it (the connection drops: what a timeout or a ``kill -9`` mid-request looks
like to the outbox), and the engine retries. It prints, per mode, the alerts,
the answers lost, the messages shown and the duplicates. With a bot token the
retry finds the message first (``conversations.history`` by metadata); a
webhook has no read API, so every lost answer is one duplicate.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon.lab.fake_slack import Endpoint, FakeSlack, Reply
from detectors.findings import Entity, Finding, Source
from playbooks.config import PlaybookSettings, SlackConnection
from playbooks.engine import ResponseEngine
from playbooks.model import load_playbooks

_PLAYBOOK = """
actions:
  chat: {type: slack}
routes:
  - name: all
    match: {min_severity: low}
    actions: [chat]
    dedup: {key: "{finding_id}", window: 1h}
"""


def _finding(i: int) -> Finding:
    return Finding.build(
        detector="bench.repeats", kind="model_extraction", severity="high",
        entity=Entity("principal", f"p{i}"), model_id="m", summary="bench", evidence={},
        atlas=[], event_ts=1_700_000_000.0 + i, sources=[Source("bench", 0, i)])


def run(mode: str, alerts: int, lost: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with FakeSlack() as slack, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "playbooks"
        folder.mkdir()
        (folder / "bench.yaml").write_text(_PLAYBOOK)
        settings = PlaybookSettings.model_validate({
            "dir": str(folder), "outbox_path": str(Path(tmp) / "outbox.sqlite3"),
            "retry_backoff": 0.01, "retry_backoff_max": 0.05, "max_attempts": 20,
            "workers": 2, "tick_interval": 0.05})
        conn = (SlackConnection(bot_token=slack.token, channel="#bench",
                                api_base_url=slack.api_base_url, timeout_s=5.0)
                if mode == "bot_token" else
                SlackConnection(webhook_url=slack.webhook_url, timeout_s=5.0))
        endpoint: Endpoint = "chat.postMessage" if mode == "bot_token" else "webhook"
        dropped = sum(rng.random() < lost for _ in range(alerts))
        slack.script(*[Reply.lost(endpoint)] * dropped)  # the first `dropped` posts
        engine = ResponseEngine(load_playbooks(folder), settings, slack=conn)
        engine.start()
        started = time.monotonic()
        for i in range(alerts):
            engine.submit(_finding(i))
        deadline = time.monotonic() + 120
        while engine.outbox.count("status IN ('pending', 'running')") and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        engine.stop(timeout=2.0)
        shown = len([r for r in slack.delivered if r.endpoint == endpoint])
        return {"mode": mode, "alerts": alerts, "answers_lost": dropped,
                "messages_shown": shown, "duplicates": shown - alerts,
                "lookups": len([r for r in slack.requests
                                if r.endpoint.startswith("conversations.")]),
                "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--lost", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for mode in ("bot_token", "webhook"):
        result = run(mode, args.alerts, args.lost, args.seed)
        print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
