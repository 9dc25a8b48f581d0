"""How audit events name pipeline runs: run ids in attributes, and runs that account for an action.

Shared by the training-data write and model change detectors.
"""

from __future__ import annotations

from typing import Final

from detectors.context import (
    MAX_RUN_ID_CHARS,
    ContextTable,
    run_verdict,
)

__all__ = ["MAX_RUN_IDS", "RUN_END", "attr", "in_expected_run", "run_id"]

RUN_END: Final = frozenset(
    {"end", "ended", "finished", "completed", "succeeded", "success", "failed", "done"}
)
RUN_ID_KEYS: Final = ("run_id", "pipeline_run_id")
#: Run ids remembered per actor (to tie a change to its run by id).
MAX_RUN_IDS: Final = 16


def attr(attrs: dict[str, object] | None, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` that ``attrs`` holds as a non-empty string or integer."""
    if not attrs:
        return None
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str | int) and value != "":
            return str(value)
    return None


def run_id(attrs: dict[str, object] | None) -> str | None:
    """The pipeline run id ``attrs`` carry, if any (an over-long one is none)."""
    found = attr(attrs, RUN_ID_KEYS)
    return found if found is not None and len(found) <= MAX_RUN_ID_CHARS else None


def in_expected_run(context: ContextTable, attrs: dict[str, object] | None, ts: float) -> bool:
    """True if ``attrs`` name a published run that accounts for an action at ``ts``
    (the defaults of :class:`ModelChangeOutsidePipelineDetector`)."""
    found = run_id(attrs)
    run = context.get_run(found) if found is not None else None
    return run is not None and run_verdict(run, ts, 2, 86400.0, 300.0, 900.0, 6 * 3600.0) is None
