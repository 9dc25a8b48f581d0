"""``contract``: today's wire formats (shared/contract/README.md), the default.

One JSON event per message, decoded by :func:`detectors.events.decode_event`
(the kind fixed by the topic's option) or :func:`detectors.events.decode_any`
(the kind named by the event's ``event_type`` field).

>>> fmt = ContractFormat(ContractOptions(event_type="access"))
>>> [r.event.principal for r in fmt.decode(
...     b'{"ts": 1, "principal": "ann", "action": "login", "outcome": "success"}', [], None)]
['ann']
>>> fmt.decode(b'{"ts": 1}', [], None)[0].reason
'missing_field'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

from detectors.events import Event, decode_any, decode_event, event_decoder

from .base import Decoded, FormatOptions, Headers, Result, guarded

__all__ = ["ContractFormat", "ContractOptions"]


class ContractOptions(FormatOptions):
    """``event_type``: the kind every message of the topic holds; None: read ``event_type``."""

    event_type: Literal["inference", "audit", "access"] | None = None


class ContractFormat:
    """The contract's JSON events, one per message."""

    name: ClassVar[str] = "contract"

    def __init__(self, options: ContractOptions | None = None) -> None:
        self.options = options or ContractOptions()

    def decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        return guarded(self.name, self._decode, value, headers, timestamp_ms, self.options)

    def _decode(self, value: bytes, headers: Headers, timestamp_ms: int | None) -> list[Result]:
        kind = self.options.event_type
        event = decode_event(value, kind) if kind is not None else decode_any(value)
        return [Decoded(event)]

    def fast_path(self) -> tuple[Callable[[bytes], Event], int] | None:
        """(decode, largest value) for the hot loop, when the topic's kind is fixed.

        ``decode(value)`` is what :meth:`decode` does with a value of type bytes,
        non-empty and at most that large, when it gives an event; on any
        exception the caller asks :meth:`decode` instead, which names the reason.
        """
        kind = self.options.event_type
        return None if kind is None else (event_decoder(kind), self.options.max_bytes)

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {}
