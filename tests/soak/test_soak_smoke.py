"""``mlwatchd soak`` at toy size: real broker, real ``mlwatchd run`` replicas, real faults.

The full-size soak (1M events, 1M flood principals, 10k poison, 20 kills) is
``make soak``; this checks that the machinery and its invariants hold on a
small input in well under a minute.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from daemon.lab.soak import SoakOptions, run_soak

pytestmark = pytest.mark.integration


def test_soak_small_run_keeps_every_invariant(tmp_path):
    # At this size the posts come in one burst: Slack fails from the start to catch it.
    opts = SoakOptions(events=3_000, poison=100, flood_principals=1_000, replicas=2, kills=2,
                       slack_fault_s=4.0, slack_fault_at=0.0, retry_after_s=1.0, settle_s=5.0,
                       timeout_s=240.0, workdir=str(tmp_path))
    report = run_soak(opts)
    faulty = report["faulty"]
    assert report["input"]["poison"] == 100
    assert faulty["unprocessed"] == 0 and not faulty["timed_out"]
    assert faulty["kills_done"] == 2
    assert [a["action"] for a in faulty["actions"]].count("restart") >= 2
    assert any(a["action"] == "add replica" for a in faulty["actions"])
    assert any(a["action"] == "remove replica (SIGTERM)" for a in faulty["actions"])
    assert report["slack"]["duplicate_posts"] == 0
    assert report["slack"]["posts_delivered"] > 0 and report["slack"]["faults_answered"] > 0
    assert report["dlq"]["distinct_sources"] == 100
    assert report["clean"]["dlq"]["distinct_sources"] == 100
    assert faulty["outbox"].get("due", 0) == 0
    assert report["invariants"]["ok"], report["invariants"]
    # Partition-scoped detectors hand their state over: same ids as the clean run.
    by_detector = report["compare"]["by_detector"]
    for name in ("access.impossible_travel", "access.privilege_grant", "access.exfiltration"):
        row = by_detector.get(name)
        assert row is not None and row["only_clean"] == row["only_faulty"] == 0, (name, row)
    assert (tmp_path / "report.json").is_file()


def test_soak_cli_has_the_issue_defaults():
    out = subprocess.run([sys.executable, "-m", "daemon.cli", "soak", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for flag, default in (("--events", "1000000"), ("--poison", "10000"),
                          ("--flood-principals", "1000000"), ("--replicas", "(3)"),
                          ("--kills", "(20)")):
        assert flag in out and default in out, flag
