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
