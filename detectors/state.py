"""Bounded per-entity state shared by detectors.

:class:`EntityTable` keeps at most ``capacity`` entries and evicts the least
recently touched one when a new entity arrives, so a flood of new principal
ids cannot exhaust memory; evictions are counted for /metrics.

>>> table = EntityTable(capacity=2)
>>> for who in ("a", "b", "a", "c"):
...     _ = table.touch(who, list)
>>> list(table), table.evicted
(['a', 'c'], 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["EntityTable"]

V = TypeVar("V")


class EntityTable(Generic[V]):
    """Least-recently-used map of entity id to state, capped in size."""

    __slots__ = ("_items", "capacity", "evicted")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.evicted = 0
        self._items: dict[str, V] = {}

    def touch(self, key: str, factory: Callable[[], V]) -> V:
        """The state of ``key``, created by ``factory`` if new; marks it recently used."""
        items = self._items
        value = items.pop(key, None)
        if value is None:
            value = factory()
            if len(items) >= self.capacity:
                del items[next(iter(items))]
                self.evicted += 1
        items[key] = value
        return value

    def get(self, key: str) -> V | None:
        return self._items.get(key)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(self._items.items())

    def __getstate__(self) -> dict[str, object]:
        return {"capacity": self.capacity, "evicted": self.evicted, "items": self._items}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.capacity = state["capacity"]  # type: ignore[assignment]
        self.evicted = state["evicted"]  # type: ignore[assignment]
        self._items = state["items"]  # type: ignore[assignment]
