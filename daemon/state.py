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

Two stores keep checkpoints:

- :class:`LocalStateStore` writes files on local disk (the single-process
  default, or replicas sharing a volume). Files are pickles written and read
  only by mlwatchd: protect the directory as you would the daemon's config.
- :class:`KafkaStateStore` writes them to a compacted Kafka topic, the Kafka
  Streams changelog pattern, so a replica on another host restores the state
  of the partitions it gains. A checkpoint is split into chunks (a week of a
  busy model's state is several MB; Kafka's default message limit is 1 MB)
  followed by a manifest that names the chunks, their SHA-256 and an
  HMAC-SHA256 made with ``state.signing_key``: a checkpoint that was not
  written by a holder of the key is refused before it is unpickled. Chunks
  alternate between two key slots, so a crash in the middle of a write never
  damages the checkpoint the last manifest points to, even after compaction.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import structlog

from detectors.pipeline import GLOBAL, DetectorSpec, is_model_partition, repartition_of

__all__ = ["Checkpoint", "KafkaStateStore", "LocalStateStore", "StateStore", "spec_fingerprint"]

log = structlog.get_logger("mlwatchd.state")

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
    #: Model partitions: "topic:partition" of each source input partition -> the
    #: last source offset the state holds (repartitioned copies at or below it
    #: are duplicates from a crashed forwarder and are skipped).
    sources: dict[str, int] = field(default_factory=dict)


class StateStore(Protocol):
    """Where checkpoints are kept."""

    def save(self, checkpoint: Checkpoint) -> int:
        """Write ``checkpoint``; returns its size in bytes."""

    def load(self, partition: int) -> Checkpoint | None:
        """The last checkpoint of ``partition``, None if there is none; ValueError
        if there is one that cannot be used."""

    def close(self) -> None:
        """Release connections."""


def partition_name(partition: int) -> str:
    """``p3`` for input partition 3, ``m2`` for repartition partition 2, ``global``."""
    if partition == GLOBAL:
        return "global"
    if is_model_partition(partition):
        return f"m{repartition_of(partition)}"
    return f"p{partition}"


def _encode(checkpoint: Checkpoint) -> bytes:
    checkpoint.saved_at = time.time()
    return pickle.dumps((_FORMAT, checkpoint), protocol=pickle.HIGHEST_PROTOCOL)


def _decode(raw: bytes, where: str) -> Checkpoint:
    try:
        version, checkpoint = pickle.loads(raw)
    except Exception as exc:
        raise ValueError(f"{where}: unreadable checkpoint ({type(exc).__name__})") from None
    if version != _FORMAT or not isinstance(checkpoint, Checkpoint):
        raise ValueError(f"{where}: checkpoint format {version!r} is not {_FORMAT}")
    return checkpoint


class LocalStateStore:
    """Checkpoints as one file per state partition in ``directory`` (atomic replace)."""

    def __init__(self, directory: str | os.PathLike[str], group_id: str) -> None:
        self.directory = Path(directory) / _safe(group_id)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, partition: int) -> Path:
        return self.directory / f"{partition_name(partition)}.ckpt"

    def save(self, checkpoint: Checkpoint) -> int:
        """Write ``checkpoint``; returns its size in bytes."""
        payload = _encode(checkpoint)
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
        return _decode(raw, str(path))

    def close(self) -> None:
        pass


class KafkaStateStore:
    """Checkpoints in a compacted Kafka topic, chunked and authenticated.

    Layout, for consumer group ``g`` and state partition ``p3``:

    - chunks keyed ``g/p3/<slot>/<i>`` (slot = generation % 2), each at most
      ``chunk_bytes``, with a ``mlwatchd.gen`` header;
    - then a manifest keyed ``g/p3``: JSON with generation, slot, chunk count,
      offset of the first chunk, SHA-256 of the whole payload and an
      HMAC-SHA256 over all of that.

    Every message of one state partition goes to the same topic partition
    (CRC32 of the manifest key), so loading reads one partition: backwards
    from its end to the newest manifest, then forwards from the first chunk.
    Compaction keeps the newest manifest and the newest chunk of each key;
    the two slots mean the chunks that manifest names are never overwritten
    by a newer, unfinished write.
    """

    def __init__(self, kafka: Any, topic: str, group_id: str, signing_key: bytes,
                 chunk_bytes: int = 512 * 1024, timeout_s: float = 30.0) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from daemon.kafka_io import client_config

        if len(signing_key) < 16:
            raise ValueError("state signing key must have at least 16 bytes")
        self.topic, self.group = topic, group_id
        self._key = signing_key
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        common = client_config(kafka)
        self._producer = KafkaProducer(**common, acks="all", linger_ms=0,
                                       max_request_size=chunk_bytes + 64 * 1024,
                                       bootstrap_timeout_ms=5_000)
        self._reader = KafkaConsumer(**common, group_id=None, enable_auto_commit=False,
                                     max_partition_fetch_bytes=chunk_bytes + 64 * 1024,
                                     fetch_max_bytes=max(chunk_bytes * 4, 50 * 1024 * 1024),
                                     fetch_max_wait_ms=100, bootstrap_timeout_ms=5_000)
        #: manifest key -> generation of the newest manifest we know of
        self._generations: dict[str, int] = {}

    # -- layout ----------------------------------------------------------

    def _manifest_key(self, partition: int) -> str:
        return f"{self.group}/{partition_name(partition)}"

    def _topic_partition(self, key: str) -> Any:
        from kafka import TopicPartition

        parts = self._reader.partitions_for_topic(self.topic)
        if not parts:
            raise OSError(f"state topic {self.topic!r} does not exist")
        return TopicPartition(self.topic, zlib.crc32(key.encode()) % len(parts))

    def _mac(self, manifest: dict[str, Any]) -> str:
        fields = {k: v for k, v in manifest.items() if k != "mac"}
        body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    # -- save --------------------------------------------------------------

    def save(self, checkpoint: Checkpoint) -> int:
        payload = _encode(checkpoint)
        key = self._manifest_key(checkpoint.partition)
        tp = self._topic_partition(key)
        if key not in self._generations:
            found = self._newest_manifest(tp, key)
            self._generations[key] = found[0]["gen"] if found else 0
        gen = self._generations[key] + 1
        slot = gen % 2
        pieces = [payload[i:i + self.chunk_bytes]
                  for i in range(0, len(payload), self.chunk_bytes)] or [b""]
        headers = [("mlwatchd.gen", str(gen).encode())]
        futures = [self._producer.send(self.topic, key=f"{key}/{slot}/{i}".encode(),
                                       value=piece, headers=headers, partition=tp.partition)
                   for i, piece in enumerate(pieces)]
        self._producer.flush(timeout=self.timeout_s)
        try:
            first = futures[0].get(timeout=self.timeout_s).offset
            for future in futures[1:]:
                future.get(timeout=self.timeout_s)
        except Exception as exc:
            raise OSError(f"state chunks not acknowledged: {type(exc).__name__}: {exc}") \
                from None
        manifest: dict[str, Any] = {
            "v": _FORMAT, "key": key, "gen": gen, "slot": slot, "chunks": len(pieces),
            "first": first, "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        manifest["mac"] = self._mac(manifest)
        try:
            self._producer.send(self.topic, key=key.encode(), value=orjson.dumps(manifest),
                                partition=tp.partition).get(timeout=self.timeout_s)
        except Exception as exc:
            raise OSError(f"state manifest not acknowledged: {type(exc).__name__}: {exc}") \
                from None
        self._generations[key] = gen
        return len(payload)

    # -- load --------------------------------------------------------------

    def load(self, partition: int) -> Checkpoint | None:
        key = self._manifest_key(partition)
        tp = self._topic_partition(key)
        found = self._newest_manifest(tp, key)
        if found is None:
            self._generations[key] = 0
            return None
        manifest, end = found
        self._generations[key] = manifest["gen"]
        where = f"{self.topic}[{tp.partition}] {key} gen {manifest['gen']}"
        if not hmac.compare_digest(str(manifest.get("mac", "")), self._mac(manifest)):
            raise ValueError(f"{where}: manifest signature does not verify "
                             "(written without state.signing_key, or tampered with)")
        wanted = {f"{key}/{manifest['slot']}/{i}".encode(): i
                  for i in range(manifest["chunks"])}
        gen = str(manifest["gen"]).encode()
        pieces: dict[int, bytes] = {}
        for message in self._read(tp, manifest["first"], end):
            index = wanted.get(message.key)
            if index is not None and dict(message.headers or ()).get("mlwatchd.gen") == gen:
                pieces[index] = message.value or b""
                if len(pieces) == len(wanted):
                    break
        if len(pieces) != len(wanted):
            raise ValueError(f"{where}: {len(wanted) - len(pieces)} of {len(wanted)} "
                             "chunks are missing")
        payload = b"".join(pieces[i] for i in range(len(wanted)))
        if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
            raise ValueError(f"{where}: chunks do not match the manifest's SHA-256")
        return _decode(payload, where)

    def _newest_manifest(self, tp: Any, key: str) -> tuple[dict[str, Any], int] | None:
        """The newest manifest of ``key`` in ``tp`` and the offset after it."""
        begin = self._reader.beginning_offsets([tp])[tp]
        end = self._reader.end_offsets([tp])[tp]
        want = key.encode()
        stop, window = end, 64
        while stop > begin:
            start = max(begin, stop - window)
            newest: tuple[dict[str, Any], int] | None = None
            for message in self._read(tp, start, stop):
                if message.key == want:
                    try:
                        newest = (orjson.loads(message.value), message.offset)
                    except orjson.JSONDecodeError:
                        log.warning("state_manifest_unreadable", key=key, offset=message.offset)
            if newest is not None:
                return newest
            stop, window = start, window * 4
        return None

    def _read(self, tp: Any, start: int, stop: int) -> Iterator[Any]:
        """Messages of ``tp`` with offsets in [start, stop)."""
        self._reader.assign([tp])
        self._reader.seek(tp, start)
        deadline = time.monotonic() + self.timeout_s
        while self._reader.position(tp) < stop:
            if time.monotonic() > deadline:
                raise OSError(f"timed out reading {tp.topic}[{tp.partition}] "
                              f"{start}..{stop}")
            batch = self._reader.poll(timeout_ms=500).get(tp, [])
            for message in batch:
                if message.offset >= stop:
                    return
                yield message

    def close(self) -> None:
        for client in (self._producer, self._reader):
            try:
                client.close()
            except Exception as exc:  # closing is best effort
                log.warning("state_store_close_failed", error=str(exc))


def snapshot_detectors(
    pipeline: Any, partition: int, fingerprints: Mapping[str, str]
) -> dict[str, tuple[str, bytes]]:
    return {name: (fingerprints.get(name, ""), state)
            for name, state in pipeline.snapshot(partition).items()}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "group"
