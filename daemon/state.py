"""Detector state checkpoints, consistent with committed offsets.

A checkpoint of a *state partition* (the partition number shared by the
co-partitioned input topics, or GLOBAL for model-scoped detectors) holds each
detector's snapshot together with the input offsets that state reflects. It
is written after a batch's findings were acknowledged and *before* the batch's
offsets are committed (and before the first commit after any assignment), so
no commit ever runs ahead of saved state. Restoring it and seeking to its
offsets gives the same state, and the same findings with the same ids, as
never having stopped: events committed after the checkpoint are processed
again; a checkpoint newer than the last commit skips what it already holds.

Each detector's snapshot is stored with a fingerprint of its config (name and
params): after a config change that detector starts afresh instead of
inheriting old thresholds.

The store here keeps files on local disk (the single-process default). Files
are pickles written and read only by mlwatchd: protect the directory as you
would the daemon's config (see README, "State").
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from detectors.pipeline import GLOBAL, DetectorSpec

__all__ = ["Checkpoint", "LocalStateStore", "spec_fingerprint"]

_FORMAT = 1


def spec_fingerprint(spec: DetectorSpec) -> str:
    """Stable digest of a detector's name and params."""
    canonical = orjson.dumps({"name": spec.name, "params": dict(spec.params),
                              "models": spec.models},
                             option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()[:16]


@dataclass
class Checkpoint:
    """State of one state partition and the input offsets it reflects."""

    partition: int
    #: input topic -> next offset to process (for this partition number)
    offsets: dict[str, int] = field(default_factory=dict)
    #: detector name -> (config fingerprint, snapshot bytes)
    detectors: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    saved_at: float = 0.0


class LocalStateStore:
    """Checkpoints as one file per state partition in ``directory`` (atomic replace)."""

    def __init__(self, directory: str | os.PathLike[str], group_id: str) -> None:
        self.directory = Path(directory) / _safe(group_id)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, partition: int) -> Path:
        name = "global" if partition == GLOBAL else f"p{partition}"
        return self.directory / f"{name}.ckpt"

    def save(self, checkpoint: Checkpoint) -> int:
        """Write ``checkpoint``; returns its size in bytes."""
        checkpoint.saved_at = time.time()
        payload = pickle.dumps((_FORMAT, checkpoint), protocol=pickle.HIGHEST_PROTOCOL)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ckpt-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path(checkpoint.partition))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return len(payload)

    def load(self, partition: int) -> Checkpoint | None:
        """The last checkpoint of ``partition``, or None (also for an unreadable file)."""
        path = self._path(partition)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            version, checkpoint = pickle.loads(raw)
        except Exception as exc:
            raise ValueError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
        if version != _FORMAT or not isinstance(checkpoint, Checkpoint):
            raise ValueError(f"{path}: checkpoint format {version!r} is not {_FORMAT}")
        return checkpoint


def snapshot_detectors(
    pipeline: Any, partition: int, fingerprints: Mapping[str, str]
) -> dict[str, tuple[str, bytes]]:
    return {name: (fingerprints.get(name, ""), state)
            for name, state in pipeline.snapshot(partition).items()}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "group"
