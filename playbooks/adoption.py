"""Adopting the outbox of a replica that is gone (issue #15: alerts stranded at a scale-down).

Every process holding an outbox keeps a shared ``flock`` on
``<outbox>.owner`` (:class:`playbooks.outbox.Outbox`); the kernel drops it when
the process ends, ``kill -9`` included. An outbox whose lock is free has no
owner. :func:`adopt_orphans` (run every few seconds by the engine when
``playbooks.adopt_outboxes`` is set) takes such an outbox's lock exclusively,
copies its undelivered jobs into this replica's outbox and marks them
``adopted`` there.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

from playbooks.outbox import OWNER_SUFFIX, SIDECARS, Outbox, owner_lock
from playbooks.state_files import check_sidecars, private_file

__all__ = ["adopt_orphans"]


def adopt_orphans(outbox: Outbox, pattern: str, now: float) -> dict[str, int]:
    """Take over the undelivered jobs of outboxes nobody holds; {file: jobs taken}.

    ``pattern`` is a glob in this outbox's directory (other replicas'
    outboxes, e.g. ``outbox-*.sqlite3``). An outbox is an orphan when its
    owner lock file exists and its lock is free (every process that had it
    open has ended). Its pending and running jobs are copied here (a
    running one's attempt may have landed: its ``unknown_since`` mark goes
    along, so a Slack post is looked up before it is sent again), due at
    once (a TTL revert keeps its time; a retry waits no longer), with
    the Slack thread state of their incidents, then marked ``adopted``
    there, all while holding its lock exclusively: the owner, restarting,
    waits for it. Adopting twice enqueues nothing twice (idempotency keys).
    """
    taken: dict[str, int] = {}
    if outbox.memory:
        return taken
    for other in sorted(outbox.path.parent.glob(pattern)):
        if other == outbox.path or other.name.endswith(SIDECARS) or not other.is_file():
            continue
        lock = other.with_name(other.name + OWNER_SUFFIX)
        if not os.path.lexists(lock):
            continue  # not an outbox of this version: it never says it is orphaned
        fd = owner_lock(other, fcntl.LOCK_EX, 0.0)
        if fd is None:
            continue  # its owner is alive
        try:
            count = _adopt(outbox, other, now)
        finally:
            os.close(fd)
        if count:
            taken[str(other)] = count
    return taken

def _adopt(outbox: Outbox, other: Path, now: float) -> int:
    private_file(other)
    check_sidecars(other)
    src = sqlite3.connect(str(other), timeout=outbox.busy_timeout_s, isolation_level=None)
    src.row_factory = sqlite3.Row
    try:
        src.execute("BEGIN IMMEDIATE")
        rows = src.execute("SELECT * FROM jobs WHERE status IN ('pending', 'running') "
                           "ORDER BY id").fetchall()
        if not rows:
            src.execute("ROLLBACK")
            return 0
        incidents = sorted({r["incident_id"] for r in rows if r["incident_id"]})
        marks = ",".join("?" for _ in incidents)
        states = src.execute(f"SELECT incident_id, action, state FROM action_state "
                             f"WHERE incident_id IN ({marks})", incidents).fetchall() \
            if incidents else []
        with outbox.tx() as db:
            for r in rows:
                db.execute(
                    "INSERT OR IGNORE INTO jobs (idem_key, route, action, phase, dest, "
                    "incident_id, finding, extra, dry_run, status, attempts, next_at, "
                    "created_at, updated_at, last_error) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                    (r["idem_key"], r["route"], r["action"], r["phase"], r["dest"],
                     r["incident_id"], r["finding"], r["extra"], r["dry_run"],
                     r["attempts"],
                     r["next_at"] if r["phase"] == "revert" else min(r["next_at"], now),
                     r["created_at"], now, r["last_error"]))
            db.executemany("INSERT OR IGNORE INTO action_state (incident_id, action, "
                           "state) VALUES (?, ?, ?)", [tuple(s) for s in states])
        ids = [r["id"] for r in rows]
        src.execute(f"UPDATE jobs SET status = 'adopted', updated_at = ?, last_error = ? "
                    f"WHERE id IN ({','.join('?' for _ in ids)})",
                    (now, f"adopted by {outbox.path} (pid {outbox.owner})", *ids))
        src.execute("COMMIT")
        return len(rows)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            src.execute("ROLLBACK")
        raise
    finally:
        src.close()
