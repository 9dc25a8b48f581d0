"""The shipped deploy files start with the daemon's state-dir checks (issue #12 item 8).

mlwatchd refuses a state directory writable by group or others. A Kubernetes
emptyDir is 0777, so the chart points ``MLWATCHD_STATE__DIR`` at a
subdirectory of the mount, which the daemon creates 0700 for itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from deploy_helpers import REPO, one, render

from daemon.metrics import Metrics
from daemon.response import build_response
from daemon.settings import Settings


def test_the_chart_puts_state_in_a_subdirectory_of_the_emptydir() -> None:
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    [c] = [c for c in pod["containers"] if c["name"] == "mlwatchd"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    state_mount = mounts["state"].rstrip("/")
    assert env["MLWATCHD_STATE__DIR"] == f"{state_mount}/state"


def test_the_daemon_starts_on_a_0777_mount_with_the_charts_subdirectory(tmp_path: Path) -> None:
    mount = tmp_path / "var-lib-mlwatchd"
    mount.mkdir()
    mount.chmod(0o777)  # what an emptyDir looks like
    state = mount / "state"
    settings = Settings(state={"dir": str(state)},
                        playbooks={"dir": str(REPO / "config" / "playbooks")})
    route = build_response(settings, Metrics())
    assert route is not None
    route.stop(0.1)
    assert os.stat(state).st_mode & 0o777 == 0o700
