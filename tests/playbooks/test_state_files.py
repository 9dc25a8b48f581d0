"""Issue #12 item 8 / #15 item 2: no response state in shared temp paths, nothing planted adopted.

The outbox decides which actions run: a file someone else could create or
write first is refused, and a containment job that requires approval is
never published without an approver recorded in the outbox's approvals.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import structlog
from pb_helpers import Published, build_finding, wait_until

from daemon.metrics import Metrics
from daemon.response import build_response, outbox_path
from daemon.settings import ConfigError, Settings
from detectors.findings import encode_finding
from playbooks.outbox import MEMORY, Outbox, UnsafeStateFile

CONTAIN = """
actions:
  chat: {type: slack}
  throttle:
    type: kafka
    requires_approval: true
    params: {action: rate_limit, ttl: 1h, params: {requests_per_minute: 10}}
routes:
  - name: extraction
    match: {kinds: [model_extraction]}
    actions: [chat, throttle]
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- files and directories ------------------------------------------------------


def test_a_new_outbox_is_owner_only_in_a_directory_created_0700(tmp_path):
    path = tmp_path / "state" / "outbox.sqlite3"
    box = Outbox(path)
    box.close()
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o600
    for side in ("-wal", "-shm"):
        if (tmp_path / "state" / f"outbox.sqlite3{side}").exists():
            assert _mode(tmp_path / "state" / f"outbox.sqlite3{side}") & 0o077 == 0


def test_a_symlink_planted_at_the_outbox_path_is_refused_and_not_followed(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    (state / "outbox.sqlite3").symlink_to(target)
    with pytest.raises(UnsafeStateFile, match="symlink"):
        Outbox(state / "outbox.sqlite3")
    assert target.read_bytes() == b"precious"


def test_a_dangling_symlink_is_not_created_through(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "outbox.sqlite3").symlink_to(tmp_path / "created-by-us")
    with pytest.raises(UnsafeStateFile, match="symlink"):
        Outbox(state / "outbox.sqlite3")
    assert not (tmp_path / "created-by-us").exists()


def test_an_outbox_writable_by_others_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = state / "outbox.sqlite3"
    Outbox(planted).close()
    planted.chmod(0o666)
    with pytest.raises(UnsafeStateFile, match="writable by group or others"):
        Outbox(planted)


def test_an_older_world_readable_outbox_is_narrowed_to_the_owner(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / "outbox.sqlite3"
    Outbox(path).close()
    path.chmod(0o644)
    Outbox(path).close()
    assert _mode(path) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="creating another user's file needs root")
def test_an_outbox_created_first_by_another_user_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = state / "outbox.sqlite3"
    Outbox(planted).close()
    os.chown(planted, 54321, 54321)
    with pytest.raises(UnsafeStateFile, match="owned by uid 54321"):
        Outbox(planted)


def test_a_shared_temp_style_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # what /tmp looks like
    with pytest.raises(UnsafeStateFile, match="writable by group or others"):
        Outbox(shared / "outbox.sqlite3")
    assert not (shared / "outbox.sqlite3").exists()


# -- the daemon's choice of place ----------------------------------------------------


def _settings(tmp_path: Path, **state: object) -> Settings:
    pb = tmp_path / "pb"
    pb.mkdir(exist_ok=True)
    (pb / "contain.yaml").write_text(CONTAIN)
    return Settings(kafka={"group_id": "grp-under-test"}, state=state,
                    playbooks={"dir": str(pb)})


def _alerted_as_new(settings: Settings, finding) -> tuple[int, int]:
    """(incidents opened, duplicates) when a run with ``settings`` gets ``finding``."""
    metrics = Metrics()
    route = build_response(settings, metrics)
    assert route is not None
    try:
        route.submit(finding)
    finally:
        route.stop(0.1)
    events = metrics.playbook_events
    return (int(events.labels("incident_opened")._value.get()),
            int(events.labels("finding_duplicate")._value.get()))


def test_without_state_dir_the_outbox_is_in_memory_and_said_at_start(tmp_path):
    settings = _settings(tmp_path)
    assert str(outbox_path(settings)) == MEMORY
    before = set(os.listdir(tempfile.gettempdir()))
    finding = build_finding()
    with structlog.testing.capture_logs() as logs:
        first = _alerted_as_new(settings, finding)
    warnings = [e for e in logs if e["event"] == "playbook_outbox_in_memory"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    new = set(os.listdir(tempfile.gettempdir())) - before
    assert not [n for n in new if "grp-under-test" in n or "playbooks" in n]
    # A later run of the same group on the same host no longer takes this
    # run's findings as already alerted (#15 item 2: it posted 0 of them).
    second = _alerted_as_new(settings, finding)
    assert first == second == (1, 0)


def test_two_runs_with_their_own_state_dirs_both_alert(tmp_path):
    finding = build_finding()
    runs = [_alerted_as_new(_settings(tmp_path, dir=str(tmp_path / name)), finding)
            for name in ("run-a", "run-b")]
    assert runs == [(1, 0), (1, 0)]
    # ...while one run restarted on its own state dir remembers it.
    assert _alerted_as_new(_settings(tmp_path, dir=str(tmp_path / "run-a")), finding) == (0, 1)


def test_with_state_dir_it_is_created_0700_and_holds_the_outbox(tmp_path):
    settings = _settings(tmp_path, dir=str(tmp_path / "var" / "state"))
    route = build_response(settings, Metrics())
    assert route is not None
    route.stop(0.1)
    assert _mode(tmp_path / "var" / "state") == 0o700
    assert _mode(tmp_path / "var" / "state" / "mlwatchd-playbooks.sqlite3") == 0o600


def test_an_unsafe_state_dir_is_one_config_error_line(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)  # e.g. an emptyDir mounted as is
    with pytest.raises(ConfigError) as err:
        build_response(_settings(tmp_path, dir=str(state)), Metrics())
    assert len(err.value.problems) == 1
    assert str(state) in err.value.problems[0] and "mode 777" in err.value.problems[0]


def test_mlwatchd_run_refuses_an_unsafe_state_dir_with_exit_2(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    env = {**os.environ, "MLWATCHD_STATE__DIR": str(state),
           "MLWATCHD_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
           "MLWATCHD_OBSERVABILITY__HTTP_PORT": "off"}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())",
         "run"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.startswith("config error")]
    assert len(lines) == 1 and "writable by group or others" in lines[0]
    assert "Traceback" not in done.stderr


# -- approval enforced when publishing ------------------------------------------------


def test_a_job_written_into_the_outbox_is_not_published_without_a_recorded_approval(
        engine_factory, fake_slack):
    """What a planted outbox did: a containment job published with approved_by null."""
    published = Published()
    engine, events = engine_factory(CONTAIN, publish=published, start=False)
    finding = build_finding()
    with engine.outbox.tx() as db:
        engine.outbox.add_job(
            db, idem_key=f"{finding.finding_id}:extraction:throttle", route="extraction",
            action="throttle", phase="alert", dest="kafka", incident_id="x",
            finding=encode_finding(finding), extra={"approved_by": "U0MALLORY"},
            dry_run=False, now=0.0)
    engine.start()
    [failed] = events.wait_for("action_failed")
    assert failed["action"] == "throttle" and "approval" in failed["error"]
    assert published.on("mlwatchd.actions") == []
    [job] = engine.outbox.jobs("action = 'throttle'")
    assert job["status"] == "failed"
    audit = wait_until(lambda: [a for a in published.on("mlwatchd.audit")
                                if a["event"] == "action_failed"])
    assert audit[0]["action"] == "throttle"


def test_a_fifo_planted_at_the_outbox_path_is_refused_without_hanging(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "outbox.sqlite3", 0o600)
    with pytest.raises(UnsafeStateFile, match="not a regular file"):
        Outbox(state / "outbox.sqlite3")


def test_check_config_reports_an_unsafe_state_dir_and_creates_nothing(
        tmp_path, monkeypatch, capsys):
    from daemon.cli import main

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("MLWATCHD_STATE__DIR", str(shared))
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "writable by group or others" in err[0]
    monkeypatch.setenv("MLWATCHD_STATE__DIR", str(tmp_path / "not-yet"))
    assert main(["check-config"]) == 0
    assert not (tmp_path / "not-yet").exists()
