"""Local checkpoint files get the outbox's file checks (issue #13, mend).

The files decide what every detector believes after a restart, so, like the
playbook outbox, they live in a directory only this user can write, are
owner-only, and a symlink or someone else's file in their place is refused,
never followed or overwritten.
"""

from __future__ import annotations

import os
import stat

import pytest

from daemon.state import Checkpoint, LocalStateStore
from playbooks.outbox import UnsafeStateFile

KEY = b"0123456789abcdef-state-key"


def _checkpoint(partition: int = 0) -> Checkpoint:
    return Checkpoint(partition, {"ml.inference": 5}, {"det": ("fp", b"state")})


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_checkpoints_are_owner_only_in_an_owner_only_directory(tmp_path):
    store = LocalStateStore(tmp_path / "state", "g", KEY)
    store.save(_checkpoint())
    assert _mode(tmp_path / "state") == 0o700
    assert _mode(tmp_path / "state" / "g") == 0o700
    assert _mode(tmp_path / "state" / "g" / "p0.ckpt") == 0o600


def test_a_state_directory_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeStateFile, match="writable by group or others"):
        LocalStateStore(shared, "g", KEY)


def test_a_group_directory_that_is_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "g").symlink_to(elsewhere)
    with pytest.raises(UnsafeStateFile, match="symlink"):
        LocalStateStore(tmp_path / "state", "g", KEY)


def test_a_checkpoint_that_is_a_symlink_is_neither_read_nor_overwritten(tmp_path):
    decoy_store = LocalStateStore(tmp_path / "decoy", "g", KEY)
    decoy_store.save(_checkpoint())
    decoy = tmp_path / "decoy" / "g" / "p0.ckpt"
    before = decoy.read_bytes()
    store_dir = tmp_path / "state"
    LocalStateStore(store_dir, "g", KEY)  # creates the directories
    (store_dir / "g" / "p0.ckpt").symlink_to(decoy)
    rejected: list[tuple[str, str]] = []
    store = LocalStateStore(store_dir, "g", KEY,
                            on_reject=lambda record, reason: rejected.append((record, reason)))
    with pytest.raises(ValueError, match="symlink"):
        store.load(0)
    assert rejected == [("checkpoint", "unsafe_file")]
    with pytest.raises(OSError, match="symlink"):
        store.save(_checkpoint())
    assert decoy.read_bytes() == before, "the symlink's target was not written"
    assert os.path.islink(store_dir / "g" / "p0.ckpt")


def test_a_checkpoint_others_can_write_is_refused(tmp_path):
    store = LocalStateStore(tmp_path, "g", KEY)
    store.save(_checkpoint())
    path = tmp_path / "g" / "p0.ckpt"
    path.chmod(0o666)
    with pytest.raises(ValueError, match="writable by group or others"):
        LocalStateStore(tmp_path, "g", KEY).load(0)


def test_run_with_a_planted_group_directory_exits_2_with_one_line(tmp_path):
    """`mlwatchd run` refuses a symlinked checkpoint directory like a config error."""
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (state / "planted").symlink_to(elsewhere)
    config = tmp_path / "mlwatchd.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:1', group_id: planted}\n"
        f"state: {{dir: '{state}'}}\n"
        "observability: {http_port: 0}\n"
        "playbooks: {enabled: false}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: ") and "planted" in last and "refused" in last
