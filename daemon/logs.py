"""structlog configuration, done once at the edge (process start).

Logs go to stderr (stdout is reserved for findings in ``replay``). Secret
values never reach a log line: settings hold them as ``SecretStr``, and the
``_redact`` processor masks any field whose name says it is a secret, as a
second line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final

import structlog

__all__ = ["configure_logging"]

_SECRET_WORDS: Final = ("token", "password", "secret", "webhook_url", "key")


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name in list(event_dict):
        if any(word in name.lower() for word in _SECRET_WORDS) and event_dict[name] is not None:
            event_dict[name] = "**********"
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog (and stdlib logging, e.g. kafka-python's) to stderr."""
    numeric = getattr(logging, level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # kafka-python logs a lot at INFO; its warnings and errors still matter.
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
