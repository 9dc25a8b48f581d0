"""A response engine in a child process, for tests that ``kill -9`` it mid-request.

``python engine_child.py PLAYBOOK_DIR OUTBOX API_BASE_URL TOKEN FINDING_FILE [check]``
starts an engine posting with a bot token, submits the encoded finding in
FINDING_FILE and waits to be killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from detectors.findings import decode_finding
from playbooks.config import PlaybookSettings, SlackConnection
from playbooks.engine import ResponseEngine
from playbooks.model import load_playbooks


def main(argv: list[str]) -> None:
    folder, outbox, base, token, finding_file = argv[:5]
    check = len(argv) < 6 or argv[5] == "check"
    settings = PlaybookSettings.model_validate(
        {"dir": folder, "outbox_path": outbox, "tick_interval": 0.05})
    slack = SlackConnection(bot_token=token, channel="#ml-security", api_base_url=base,
                            timeout_s=60.0, check_before_resend=check)
    engine = ResponseEngine(load_playbooks(folder), settings, slack=slack)
    engine.start()
    engine.submit(decode_finding(Path(finding_file).read_bytes()))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
