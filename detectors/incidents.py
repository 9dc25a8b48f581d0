"""One incident per (detector, entity): a repeat updates the open incident.

A detector's cooldown is minutes or hours, so a long-running condition (a
heavy caller, a nightly job) makes it fire again and again. The pipeline puts
every detector's findings through an :class:`IncidentTable`: the first finding
about an entity opens an *incident* (the finding goes out unchanged, exactly
as the wire contract's findings; its ``finding_id`` is the incident's id);
later findings of the same detector about the same
entity, until the entity has been quiet for ``quiet_s`` seconds of event time,
are *updates* of it. An update keeps the incident's id, raises ``seq``,
``count``, ``last_ts`` and ``max_severity``, and goes out only when

- its severity is above every earlier one of the incident (an escalation,
  ``incident.escalated``), or
- at least ``update_every_s`` of event time passed since the incident's last
  emitted finding (a periodic "still going on");

other repeats are absorbed: counted into the next update, not emitted. So one
condition costs one new finding, plus at most one update per ``update_every_s``
and one per severity step; and a new cause that makes the detector fire under
an open incident goes out (as an update) within ``update_every_s``. A
finding's id stays the detector's (stable for the same evidence); the incident
id is the id of its first finding.

Memory: open incidents sit in a capped LRU :class:`~detectors.state.EntityTable`
(shared cap per detector across partitions, O(1)); the oldest open incident is
forgotten first (its next finding opens a new incident). The table is part of
the pipeline's snapshots, so a restart keeps open incidents.

>>> from detectors.findings import Entity, Finding, Source
>>> def f(i, ts, sev="medium"):
...     return Finding.build(detector="d", kind="drift", severity=sev,
...         entity=Entity("model", "m"), model_id="m", summary="s", evidence={},
...         atlas=[], event_ts=ts, sources=[Source("t", 0, i)])
>>> table = IncidentTable(IncidentPolicy(quiet_s=3600, update_every_s=1800))
>>> out = [table.admit(f(i, ts, sev)) for i, (ts, sev) in
...        enumerate([(0, "medium"), (60, "medium"), (120, "high"), (2000, "low"), (9000, "low")])]
>>> [(o.incident.seq, o.incident.count, o.incident.max_severity) if o and o.incident
...  else ("new" if o else None) for o in out]
['new', None, (2, 3, 'high'), (3, 4, 'high'), 'new']
>>> out[2].incident.id == out[0].finding_id
True
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Final

import msgspec

from detectors.findings import SEVERITIES, Finding, Incident, Severity, rfc3339
from detectors.state import CapPool, EntityTable

__all__ = ["DEFAULT_POLICY", "IncidentPolicy", "IncidentTable", "finding_seconds"]

_RANK: Final = {name: i for i, name in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class IncidentPolicy:
    """How findings of one detector group into incidents.

    ``quiet_s``: an incident stays open until its entity had no finding from
    the detector for this long (event time); 0 turns incidents off (every
    finding goes out as it is, without an ``incident`` field).
    ``update_every_s``: a non-escalating repeat goes out at most this often
    per incident (0: every repeat goes out, as an update).
    ``max_open``: open incidents kept per detector and process (LRU).
    """

    quiet_s: float = 86_400.0
    update_every_s: float = 3_600.0
    max_open: int = 100_000

    def __post_init__(self) -> None:
        if not self.quiet_s >= 0 or not self.update_every_s >= 0:
            raise ValueError("incident quiet_s and update_every_s must be >= 0")
        if self.max_open < 1:
            raise ValueError("incident max_open must be at least 1")


DEFAULT_POLICY: Final = IncidentPolicy()


class _Open(msgspec.Struct, array_like=True):
    """An open incident (internal state, snapshotted)."""

    id: str
    seq: int  # seq of the last emitted finding
    first_ts: float
    last_ts: float  # latest event time of any finding of it (emitted or absorbed)
    emitted_ts: float  # event time of the last emitted finding
    count: int  # findings so far, emitted and absorbed
    max_rank: int


class _State(msgspec.Struct, array_like=True):
    evicted: int
    items: list[tuple[str, _Open]]  # least recently used first


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(_State)


def finding_seconds(finding: Finding) -> float:
    """Event time of a finding, seconds since the epoch (from its RFC 3339 ``ts``).

    >>> from detectors.findings import Entity, Source
    >>> finding_seconds(Finding.build(detector="d", kind="drift", severity="low",
    ...     entity=Entity("model", "m"), model_id=None, summary="", evidence={},
    ...     atlas=[], event_ts=1234.5, sources=[Source("t", 0, 0)]))
    1234.5
    """
    return _dt.datetime.fromisoformat(finding.ts).timestamp()


class IncidentTable:
    """Open incidents of one detector in one state partition."""

    __slots__ = ("absorbed", "opened", "policy", "table", "updates")

    def __init__(self, policy: IncidentPolicy = DEFAULT_POLICY,
                 pool: CapPool | None = None) -> None:
        self.policy = policy
        self.table: EntityTable[_Open] = EntityTable(policy.max_open, pool)
        #: Counters since start: incidents opened, updates emitted, repeats absorbed.
        self.opened = 0
        self.updates = 0
        self.absorbed = 0

    def admit(self, finding: Finding) -> Finding | None:
        """The finding to emit for ``finding`` (with its ``incident``), or None if absorbed."""
        policy = self.policy
        if policy.quiet_s <= 0:
            return finding
        ts = finding_seconds(finding)
        rank = _RANK[finding.severity]
        key = f"{finding.entity.type}\x1f{finding.entity.id}"
        table = self.table
        cur = table.get(key)
        if cur is None or ts - cur.last_ts > policy.quiet_s:
            fresh = _Open(finding.finding_id, 1, ts, ts, ts, 1, rank)
            if cur is None:
                table.insert(key, fresh)
            else:  # the old incident went quiet: this one replaces it
                table.touch(key, lambda: fresh)
                cur.id, cur.seq, cur.first_ts, cur.last_ts = fresh.id, 1, ts, ts
                cur.emitted_ts, cur.count, cur.max_rank = ts, 1, rank
            self.opened += 1
            # The first finding goes out exactly as the contract's findings do (no
            # extra field): its finding_id is the incident's id, which updates carry.
            return finding
        table.touch(key, lambda: cur)
        cur.count += 1
        cur.last_ts = max(cur.last_ts, ts)
        escalated = rank > cur.max_rank
        if escalated:
            cur.max_rank = rank
        if not escalated and ts - cur.emitted_ts < policy.update_every_s:
            self.absorbed += 1
            return None
        cur.seq += 1
        cur.emitted_ts = max(cur.emitted_ts, ts)
        self.updates += 1
        return self._stamp(finding, cur, escalated=escalated)

    @staticmethod
    def _stamp(finding: Finding, cur: _Open, *, escalated: bool) -> Finding:
        severity: Severity = SEVERITIES[cur.max_rank]  # type: ignore[assignment]
        return msgspec.structs.replace(finding, incident=Incident(
            id=cur.id, seq=cur.seq, first_ts=rfc3339(cur.first_ts),
            last_ts=rfc3339(cur.last_ts), count=cur.count, max_severity=severity,
            escalated=escalated))

    def __len__(self) -> int:
        return len(self.table)

    def stats(self) -> dict[str, int]:
        return {"open": len(self.table), "opened": self.opened, "updates": self.updates,
                "absorbed": self.absorbed, "evicted": self.table.evicted}

    def release(self) -> None:
        """Give this table's room in the shared cap back (its partition was dropped)."""
        pool = self.table._pool
        if pool is not None:
            pool.leave(self.table)

    # -- state ---------------------------------------------------------------

    def snapshot(self) -> bytes:
        return _ENCODER.encode(_State(self.table.evicted, list(self.table.items())))

    def restore(self, raw: bytes) -> None:
        """Load open incidents (into this table, keeping its pool); bad bytes raise ValueError."""
        try:
            state = _DECODER.decode(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"unreadable incident state: {exc}") from exc
        table = self.table
        pool = table._pool
        if pool is not None:
            pool.leave(table)
        fresh: EntityTable[_Open] = EntityTable(self.policy.max_open)
        for key, value in state.items:
            fresh.insert(key, value)
        fresh.evicted += state.evicted
        if pool is not None:
            pool.join(fresh)
        self.table = fresh
