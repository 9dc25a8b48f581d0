"""The durable state of the response engine: one SQLite file (WAL).

What lives here, so that a restart neither loses nor repeats anything:

``jobs``        the outbox: one row per action delivery (pending, running,
                delivered, dry_run, failed, cancelled), with attempts, next
                attempt time and the last error. ``idem_key`` is UNIQUE: it is
                the idempotency key (finding id + route + action [+ phase]),
                so a redelivered finding cannot enqueue the same action twice,
                and a delivered row is never sent again. TTL reverts are jobs
                scheduled in the future.
``incidents``   dedup state per (route, dedup key): counts, pending repeats,
                last notice, escalation deadline, acknowledgement.
``action_state`` per incident and action: e.g. the Slack message ``ts`` that
                later notices thread under.
``seen``        (route, finding id) already handled: redeliveries are ignored.
``approvals``   Approve / Deny requests and their decisions.
``audit``       audit records not yet published to the audit topic.

All access goes through one connection guarded by a lock; every transaction
is short and never spans network I/O. ``synchronous=NORMAL`` in WAL mode
survives a process crash (not a power cut) without an fsync per commit.

Each process holding the file keeps a shared ``flock`` on ``<file>.owner``
for as long as it has the outbox open (the kernel drops it when the process
dies, ``kill -9`` included). An outbox whose lock is free has no owner: with
``playbooks.adopt_outboxes`` set, a live replica takes the lock exclusively,
copies the orphan's undelivered jobs into its own outbox (same idempotency
keys, so adopting twice enqueues nothing twice) and marks them ``adopted``
there (:func:`playbooks.adoption.adopt_orphans`): a replica removed by a scale-down
strands nothing, and one restarted later finds its jobs taken.

The file decides which actions run, so nobody else may write it: it lives in a
directory only this user can write, is created owner-only with
``O_EXCL | O_NOFOLLOW`` and checked on every open; anything else is refused with
:class:`UnsafeStateFile` (:mod:`playbooks.state_files`). ``Outbox(MEMORY)``
keeps it in memory instead (not durable). A transaction that cannot start
within its wait (another process holds the write lock) or cannot be written
(disk full) raises :class:`OutboxUnavailable` from :meth:`Outbox.tx`, so the
caller can retry instead of losing it. Background work waits up to
``busy_timeout_s``; the finding intake passes a short ``timeout_s`` so the
consumer loop is never held for long.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from playbooks.state_files import UnsafeStateFile, check_sidecars, private_dir, private_file

__all__ = [
    "MEMORY",
    "OWNER_SUFFIX",
    "SIDECARS",
    "Outbox",
    "OutboxUnavailable",
    "UnsafeStateFile",
    "owner_lock",
    "private_dir",
    "private_file",
]

#: ``Outbox(MEMORY)``: no file; everything is lost when the process ends.
MEMORY: Final = ":memory:"
#: ``<outbox><OWNER_SUFFIX>``: the lock file its live owners hold (shared flock).
OWNER_SUFFIX: Final = ".owner"
SIDECARS: Final = ("-wal", "-shm", "-journal", OWNER_SUFFIX)


class OutboxUnavailable(Exception):
    """The outbox could not record a write (locked, disk full, I/O error): try again later."""


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    idem_key TEXT NOT NULL UNIQUE,
    route TEXT NOT NULL,
    action TEXT NOT NULL,
    phase TEXT NOT NULL,
    dest TEXT NOT NULL,
    incident_id TEXT NOT NULL DEFAULT '',
    finding BLOB NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    dry_run INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, next_at);
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    opened_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    last_notice REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    pending_repeats INTEGER NOT NULL DEFAULT 0,
    max_severity TEXT NOT NULL,
    first_finding BLOB NOT NULL,
    escalate_at REAL,
    escalated INTEGER NOT NULL DEFAULT 0,
    acked_at REAL,
    acked_by TEXT,
    closed_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_open ON incidents (route, dedup_key)
    WHERE status = 'open';
CREATE TABLE IF NOT EXISTS action_state (
    incident_id TEXT NOT NULL,
    action TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (incident_id, action)
);
CREATE TABLE IF NOT EXISTS seen (
    route TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (route, finding_id)
);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL DEFAULT 'pending',
    route TEXT NOT NULL,
    action TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    finding BLOB NOT NULL,
    extra TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    message_channel TEXT,
    message_ts TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    key TEXT,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""


class Outbox:
    """The SQLite store; use :meth:`tx` for a transaction under the store's lock."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.memory = str(path) == MEMORY
        self.path = Path(path)
        self._owner_fd: int | None = None
        if not self.memory:
            private_dir(self.path.parent)
            private_file(self.path)
            check_sidecars(self.path)
            self._owner_fd = owner_lock(self.path, fcntl.LOCK_SH, busy_timeout_s)
            if self._owner_fd is None:
                raise OutboxUnavailable(f"outbox {self.path}: being adopted by another "
                                        f"process for over {busy_timeout_s:g} s")
        self._lock = threading.RLock()
        self._db = sqlite3.connect(MEMORY if self.memory else str(self.path),
                                   check_same_thread=False, timeout=busy_timeout_s,
                                   isolation_level=None)
        self._db.row_factory = sqlite3.Row
        if not self.memory:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self.busy_timeout_s = busy_timeout_s
        self._busy_now = busy_timeout_s
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "owner" not in columns:  # outboxes written before the column existed
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner INTEGER NOT NULL DEFAULT 0")
        #: Which process claimed a running job. Replicas on one host may share
        #: the file (a shared state.dir); only a dead owner's jobs are recovered.
        self.owner = os.getpid()
        self._depth = 0

    @contextmanager
    def tx(self, timeout_s: float | None = None) -> Iterator[sqlite3.Connection]:
        """One transaction (nested calls join the outer one).

        Raises :class:`OutboxUnavailable` when the store's lock (this
        process's threads) or SQLite's write lock (other processes) is not
        had within ``timeout_s`` (default ``busy_timeout_s``), or the write
        fails (disk full, I/O error); nothing of the transaction is kept then.
        """
        wait = self.busy_timeout_s if timeout_s is None else timeout_s
        if not self._lock.acquire(timeout=wait):
            raise OutboxUnavailable(f"outbox {self.path}: busy for {wait:g} s")
        try:
            if self._depth:
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            if wait != self._busy_now:
                self._db.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
                self._busy_now = wait
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc
            self._depth = 1
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    # SQLite may already have rolled back itself (e.g. SQLITE_FULL).
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    raise OutboxUnavailable(f"outbox {self.path}: {exc}") from exc
                raise
            finally:
                self._depth = 0
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._owner_fd is not None:
                os.close(self._owner_fd)  # releases the owner lock
                self._owner_fd = None

    # -- jobs ----------------------------------------------------------------

    def add_job(self, db: sqlite3.Connection, *, idem_key: str, route: str, action: str,
                phase: str, dest: str, incident_id: str, finding: bytes,
                extra: dict[str, Any], dry_run: bool, now: float,
                next_at: float | None = None) -> bool:
        """Insert a job; False when its idempotency key exists (already queued or done)."""
        cur = db.execute(
            "INSERT OR IGNORE INTO jobs (idem_key, route, action, phase, dest, incident_id, "
            "finding, extra, dry_run, next_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (idem_key, route, action, phase, dest, incident_id, finding,
             json.dumps(extra, separators=(",", ":")), int(dry_run),
             now if next_at is None else next_at, now, now),
        )
        return cur.rowcount == 1

    def claim(self, now: float, paused: set[str]) -> sqlite3.Row | None:
        """The next due pending job (not for a paused destination), marked running."""
        with self.tx() as db:
            marks = ",".join("?" for _ in paused)
            skip = f"AND dest NOT IN ({marks})" if paused else ""
            row = db.execute(
                f"SELECT * FROM jobs WHERE status = 'pending' AND next_at <= ? {skip} "
                "ORDER BY next_at, id LIMIT 1", (now, *paused)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET status = 'running', updated_at = ?, owner = ? "
                       "WHERE id = ?", (now, self.owner, row["id"]))
            claimed: sqlite3.Row = row
            return claimed

    def finish(self, db: sqlite3.Connection, job_id: int, status: str, now: float, *,
               attempts: int, error: str | None = None,
               result: dict[str, Any] | None = None) -> None:
        db.execute(
            "UPDATE jobs SET status = ?, attempts = ?, last_error = ?, result = ?, "
            "updated_at = ? WHERE id = ?",
            (status, attempts, error, json.dumps(result) if result is not None else None, now,
             job_id))

    def reschedule(self, job_id: int, next_at: float, now: float, *, attempts: int,
                   error: str | None) -> None:
        with self.tx() as db:
            db.execute(
                "UPDATE jobs SET status = 'pending', attempts = ?, next_at = ?, "
                "last_error = ?, updated_at = ? WHERE id = ?",
                (attempts, next_at, error, now, job_id))

    def mark_unknown(self, db: sqlite3.Connection, job_id: int, since: float | None) -> None:
        """Record (or, with None, clear) that an attempt begun at ``since`` may have landed."""
        if since is None:
            db.execute("UPDATE jobs SET extra = json_remove(extra, '$.unknown_since') "
                       "WHERE id = ?", (job_id,))
        else:
            db.execute("UPDATE jobs SET extra = json_set(extra, '$.unknown_since', ?) "
                       "WHERE id = ?", (since, job_id))

    def recover_running(self, include_own: bool = True, timeout_s: float | None = None) -> int:
        """Jobs left ``running`` by a process that is gone go back to pending (at least once).

        A job claimed by another live process sharing this file (a replica on
        the same host) is left alone: resetting it would post it twice. At
        start ``include_own`` also takes jobs of an earlier process that had
        our pid (a container's pid 1); while running, pass False.
        """
        with self.tx(timeout_s) as db:
            owners = [r[0] for r in db.execute(
                "SELECT DISTINCT owner FROM jobs WHERE status = 'running'")]
            dead = [o for o in owners
                    if (include_own if o == self.owner else not _alive(o))]
            if not dead:
                return 0
            marks = ",".join("?" for _ in dead)
            return db.execute(f"UPDATE jobs SET status = 'pending' WHERE status = 'running' "
                              f"AND owner IN ({marks})", dead).rowcount

    def count(self, where: str, *args: Any) -> int:
        with self.tx() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args
                                  ).fetchone()[0])

    def jobs(self, where: str = "1", *args: Any) -> list[dict[str, Any]]:
        """Rows as dicts (tests and diagnostics)."""
        with self.tx() as db:
            return [dict(r) for r in db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY id",
                                                args)]

    # -- action state ----------------------------------------------------------

    def state(self, db: sqlite3.Connection, incident_id: str, action: str) -> dict[str, Any]:
        row = db.execute("SELECT state FROM action_state WHERE incident_id = ? AND action = ?",
                         (incident_id, action)).fetchone()
        return dict(json.loads(row["state"])) if row else {}

    def set_state(self, db: sqlite3.Connection, incident_id: str, action: str,
                  state: dict[str, Any]) -> None:
        db.execute("INSERT OR REPLACE INTO action_state (incident_id, action, state) "
                   "VALUES (?, ?, ?)", (incident_id, action, json.dumps(state)))

    # -- audit -----------------------------------------------------------------

    def add_audit(self, db: sqlite3.Connection, key: str | None, payload: bytes,
                  now: float) -> None:
        db.execute("INSERT INTO audit (key, payload, created_at) VALUES (?, ?, ?)",
                   (key, payload, now))

    def audit_batch(self, limit: int = 100) -> list[sqlite3.Row]:
        with self.tx() as db:
            return list(db.execute("SELECT * FROM audit ORDER BY id LIMIT ?", (limit,)))

    def audit_done(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.tx() as db:
            db.executemany("DELETE FROM audit WHERE id = ?", [(i,) for i in ids])

    def purge(self, before: float) -> None:
        """Forget finished jobs, closed incidents and seen ids older than ``before``."""
        with self.tx() as db:
            db.execute("DELETE FROM jobs WHERE status IN ('delivered', 'dry_run', 'failed', "
                       "'cancelled', 'adopted') AND updated_at < ?", (before,))
            db.execute("DELETE FROM action_state WHERE incident_id IN (SELECT id FROM "
                       "incidents WHERE status = 'closed' AND closed_at < ?)", (before,))
            db.execute("DELETE FROM incidents WHERE status = 'closed' AND closed_at < ?",
                       (before,))
            db.execute("DELETE FROM seen WHERE at < ?", (before,))
            db.execute("DELETE FROM approvals WHERE status != 'pending' AND decided_at < ?",
                       (before,))


def owner_lock(path: Path, how: int, wait_s: float) -> int | None:
    """An fd holding ``flock(how)`` on ``path``'s owner lock file, or None if not had
    within ``wait_s`` (the file is created owner-only, symlinks refused)."""
    lock = path.with_name(path.name + OWNER_SUFFIX)
    private_file(lock)
    fd = os.open(lock, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True if a process with this id runs on this host (0: unknown owner, not alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
