"""Files that decide what runs: created owner-only, refused when others could write them.

The response outbox (:mod:`playbooks.outbox`) and the daemon's local
checkpoints (:mod:`daemon.state`) live in a directory only this user can write
(:func:`private_dir`) in files created ``O_EXCL | O_NOFOLLOW`` and checked on
every open (:func:`private_file`); anything else is refused with
:class:`UnsafeStateFile`, in one line.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["UnsafeStateFile", "check_sidecars", "private_dir", "private_file"]


class UnsafeStateFile(Exception):
    """A state directory or file that someone else could have written; the message is one line."""


def _refuse(path: Path, what: str, why: str) -> UnsafeStateFile:
    return UnsafeStateFile(f"{path}: refused as a state {what}: {why}")


def private_dir(path: str | Path, *, create: bool = True) -> Path:
    """``path`` as a directory only this user (or root) can write; created 0700 if missing.

    Refused (:class:`UnsafeStateFile`) when it is a symlink, not a directory,
    owned by another user, or writable by group or others (a shared temp
    directory such as ``/tmp`` is all of the last two). With ``create=False``
    a missing directory passes (``check-config``: it will be created).
    """
    path = Path(path)
    if not create and not os.path.lexists(path):
        return path
    try:
        if create:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise _refuse(path, "directory", f"cannot create it: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "directory", "it is a symlink")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "directory", "not a directory")
    if st.st_uid not in (os.geteuid(), 0):
        raise _refuse(path, "directory", f"owned by uid {st.st_uid}, not this user "
                                         f"({os.geteuid()})")
    if st.st_mode & 0o022:
        raise _refuse(path, "directory", f"writable by group or others (mode "
                                         f"{stat.S_IMODE(st.st_mode):o}); use a directory "
                                         "only this user can write (chmod 700)")
    return path


def private_file(path: str | Path) -> bool:
    """Create ``path`` owner-only (0600), or check the existing one; True if created.

    Created with ``O_EXCL | O_NOFOLLOW``, so a file or symlink planted first
    is never followed or adopted. An existing file must be a regular file of
    this user not writable by group or others (:class:`UnsafeStateFile`
    otherwise); one readable by others (written by an older version) is
    narrowed to 0600.
    """
    path = Path(path)
    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(path, "file", f"cannot create it: {exc.strerror}") from None
    else:
        os.close(fd)
        return True
    try:
        # O_NONBLOCK: a FIFO planted here must not hang the start.
        fd = os.open(path, os.O_RDONLY | nofollow | os.O_NONBLOCK)
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else f"cannot open it: {exc.strerror}"
        raise _refuse(path, "file", why) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "file", "not a regular file")
        if st.st_uid != os.geteuid():
            raise _refuse(path, "file", f"owned by uid {st.st_uid}, not this user "
                                        f"({os.geteuid()}): someone else created it")
        if st.st_mode & 0o022:
            raise _refuse(path, "file", f"writable by group or others (mode "
                                        f"{stat.S_IMODE(st.st_mode):o})")
        if st.st_mode & 0o044:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return False


def check_sidecars(path: Path) -> None:
    """SQLite's ``-wal``/``-shm``/``-journal`` files, when present, pass the same checks."""
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if os.path.lexists(side):
            private_file(side)
