"""Peer baselines shared by the partition instances of one configured detector.

:class:`SharedPeerValues` is the per-process, per-model table of each
principal's latest value of a statistic, shared by the partition instances of
one configured detector (through the cap pools the pipeline passes to
``share_caps``), so a principal is judged against the model's callers of every
partition, not only those of its own (``extraction.coverage`` and
``extraction.prada`` use it).

What a process holds depends on how the group spread the partitions, so only
*whether* a principal is reported is judged against the shared table; a
finding's severity is judged against its own partition's callers (the
instance's own table), so it is the same under any partition assignment
(issue #15: a severity that changed with the assignment changed the route,
hence the chat alert, of a finding whose id did not).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, TypeVar

from detectors.base import _POOLS, Detector
from detectors.state import CapPool, EntityTable

__all__ = ["SharedPeerValues", "join_pool", "peer_values", "pooled", "share_peer_values"]

S = TypeVar("S", bound="SharedPeerValues")


class SharedPeerValues(CapPool):
    """Per process and model, each principal's latest value of a peer statistic.

    A partition-scoped detector sees only its partition's callers of a model;
    its peer baseline (the population a principal is judged against) should be
    the model's callers of every partition the process holds. Every partition
    instance of one configured detector writes its principals' values here
    (through the pools the pipeline passes to ``share_caps``) and judges
    against the whole table. Keyed by principal: a restored instance merging
    its own values back in counts nobody twice, and a fresher value already
    here wins. Lives in the pools, never in a snapshot (an instance's snapshot
    keeps its own principals' values). Bounded: ``models`` models (least
    recently seen evicted) of ``max_peers`` principals each.
    """

    def __init__(self, models: int, max_peers: int) -> None:
        super().__init__(models)
        self.max_peers = max_peers
        self.values: EntityTable[EntityTable[list[float]]] = EntityTable(models)

    def table(self, model_id: str) -> EntityTable[list[float]]:
        """The model's shared table of principal -> [latest value]."""
        return self.values.touch(model_id, lambda: EntityTable(self.max_peers))

    def merge(self, model_id: str, own: EntityTable[list[float]]) -> None:
        """Add an instance's own values (those not already here)."""
        shared = self.table(model_id)
        for who, value in own.items():
            if who not in shared:
                shared.insert(who, list(value))


def pooled(detector: Detector, key: str, cls: type[S]) -> S | None:
    """The process-wide ``cls`` under ``key`` if ``detector`` joined its pools, else None."""
    pools = detector.__dict__.get(_POOLS)
    shared = None if pools is None else pools.get(key)
    return shared if isinstance(shared, cls) else None


def join_pool(
    pools: MutableMapping[str, CapPool], key: str, cls: type[S], models: int, max_peers: int
) -> S:
    """The ``cls`` under ``key`` in ``pools``, created (``models``, ``max_peers``) if absent."""
    shared = pools.get(key)
    if not isinstance(shared, cls):
        shared = pools[key] = cls(models, max_peers)
    return shared


def peer_values(
    detector: Detector, key: str, model_id: str, own: EntityTable[list[float]]
) -> EntityTable[list[float]]:
    """The model's peer table for ``detector``: the process-wide one under
    ``key`` if the detector joined its pools (:func:`share_peer_values`), else
    its own."""
    shared = pooled(detector, key, SharedPeerValues)
    return own if shared is None else shared.table(model_id)


def share_peer_values(
    pools: MutableMapping[str, CapPool],
    key: str,
    models: int,
    max_peers: int,
    own: EntityTable[Any],
    values_of: Any,
) -> None:
    """Join (creating if needed) the process's :class:`SharedPeerValues` under
    ``key`` and merge this instance's per-model values into it;
    ``values_of(entry)`` gives a model entry's principal table."""
    shared = join_pool(pools, key, SharedPeerValues, models, max_peers)
    for model_id, entry in own.items():
        shared.merge(model_id, values_of(entry))
