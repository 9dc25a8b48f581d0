"""One outbox file shared by replicas on a host: only a dead owner's jobs are recovered."""

from __future__ import annotations

import subprocess
import sys

from playbooks.outbox import Outbox


def _job(box: Outbox, key: str) -> None:
    with box.tx() as db:
        box.add_job(db, idem_key=key, route="r", action="a", phase="alert", dest="slack",
                    incident_id="", finding=b"{}", extra={}, dry_run=False, now=0.0)


def test_a_live_replicas_running_job_is_not_taken_but_a_dead_ones_is(tmp_path):
    path = tmp_path / "outbox.sqlite"
    # A replica process claims a job, then dies (as kill -9 would leave it).
    code = ("import sys; from playbooks.outbox import Outbox; "
            "b = Outbox(sys.argv[1]); print(b.claim(1.0, set())['idem_key'])")
    _job(Outbox(path), "dead-owner")
    claimed = subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert claimed == "dead-owner"

    live = Outbox(path)  # this process: a replica in the middle of a delivery
    _job(live, "live-owner")
    assert live.claim(1.0, set())["idem_key"] == "live-owner"

    starting = Outbox(path)
    starting.owner = live.owner + 1_000_000  # another process id, not running
    assert starting.recover_running(include_own=False) == 1
    status = {j["idem_key"]: j["status"] for j in starting.jobs()}
    assert status == {"dead-owner": "pending", "live-owner": "running"}
