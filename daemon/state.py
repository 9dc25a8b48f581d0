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

Why one module of ~500 lines: the two stores share the checkpoint, its
encoding, the signed envelope and the generation rule, and a reviewer of
either store must read those together; each store alone is a class of
about 100 and 230 lines.

Two stores keep checkpoints:

A checkpoint is a msgpack record of named fields (:class:`_CheckpointRecord`),
not a pickle of a class: moving or renaming code does not make it unreadable.
Each detector's entry inside it is that detector's own versioned snapshot
(:mod:`detectors.state_codec`); an entry that cannot be read costs only that
detector its state (the pipeline starts it afresh and the daemon counts it).

- :class:`LocalStateStore` writes files on local disk (the single-process
  default, or replicas sharing a volume), owner-only, through the same
  checked helpers as the playbook outbox (`playbooks.state_files.private_dir`/`private_file`:
  no symlinks followed, new files created exclusively). With
  ``state.signing_key`` set they are signed (HMAC-SHA256) and a file that
  does not verify is refused before it is parsed; without a key they only
  carry a SHA-256, so protect the directory as you would the daemon's config.
- :class:`KafkaStateStore` writes them to a compacted Kafka topic, the Kafka
  Streams changelog pattern, so a replica on another host restores the state
  of the partitions it gains. A checkpoint is split into chunks (a week of a
  busy model's state is several MB; Kafka's default message limit is 1 MB)
  followed by a manifest that names the chunks and their SHA-256, signed with
  ``state.signing_key`` in a ``mlwatchd-mac`` header. The manifest's raw
  bytes are verified before they are parsed: a record that was not written
  by a holder of the key is skipped (and counted), never parsed or
  unpickled. Chunks alternate between two key slots, so a crash in the
  middle of a write never damages the checkpoint the last manifest points
  to, even after compaction.

Every signature is bound to where the checkpoint belongs (consumer group,
store or topic, state partition) and covers its generation, a number that
grows with every save: a checkpoint copied to another partition's place does
not verify, and one older than a generation this process has already seen
is refused (rollback). Checkpoints written by mlwatchd before this format
(including the pickled record of format 1) are refused too: their state is
relearnt once after an upgrade.

(About 560 lines, over the ~400 of other modules: the two stores share the
record encoding, the envelope, the generation rules and the partition
names, and most of the length is the explanation of each.)
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec
import orjson
import structlog

from daemon.integrity import MAC_HEADER, MIN_KEY_BYTES, RejectHook, header, record_mac, verify_mac
from detectors.pipeline import DetectorSpec, StatePartition
from playbooks.state_files import UnsafeStateFile, private_dir, private_file

__all__ = ["Checkpoint", "KafkaStateStore", "LocalStateStore", "StateStore", "spec_fingerprint"]

log = structlog.get_logger("mlwatchd.state")

#: Version of the checkpoint record (msgpack of :class:`_CheckpointRecord`; 1 was a pickle).
_FORMAT = 2
#: Version of the signed envelope (local files and Kafka manifests).
_ENVELOPE = 2
#: A generation above this is not a real one (8-byte field, room to count).
_MAX_GEN = 2**62
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


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
    #: Model partitions: for a source whose last copy was one event of a message
    #: holding several, that event's item index (copies of the same offset at
    #: or below it are duplicates too).
    source_items: dict[str, int] = field(default_factory=dict)
    #: Input topic -> its format's state (``Format.snapshot()``, plain JSON:
    #: e.g. the requests a KServe join still waits to answer), for this partition.
    formats: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Model partitions: the events held for event-time alignment
    #: (``EventTimeAligner.snapshot()``, plain JSON), not yet fed to the state.
    aligned: dict[str, Any] = field(default_factory=dict)


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
    return str(StatePartition.from_code(partition))


class _CheckpointRecord(msgspec.Struct, forbid_unknown_fields=False):
    """The wire form of a :class:`Checkpoint`: field names, not a class path."""

    format: int
    partition: int
    offsets: dict[str, int]
    detectors: dict[str, tuple[str, bytes]]
    saved_at: float
    sources: dict[str, int] = {}
    source_items: dict[str, int] = {}
    formats: dict[str, dict[str, Any]] = {}
    aligned: dict[str, Any] = {}


_RECORD_DECODER = msgspec.msgpack.Decoder(_CheckpointRecord)


def _encode(checkpoint: Checkpoint) -> bytes:
    checkpoint.saved_at = time.time()
    return msgspec.msgpack.encode(_CheckpointRecord(
        _FORMAT, checkpoint.partition, checkpoint.offsets, checkpoint.detectors,
        checkpoint.saved_at, checkpoint.sources, checkpoint.source_items, checkpoint.formats,
        checkpoint.aligned))


def _decode(raw: bytes, where: str, partition: int) -> Checkpoint:
    """Parse an *authenticated* payload; only ever called after its MAC or digest checked."""
    try:
        record = _RECORD_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{where}: unreadable checkpoint ({exc})") from None
    except Exception as exc:
        raise ValueError(f"{where}: unreadable checkpoint ({type(exc).__name__})") from None
    if record.format != _FORMAT:
        raise ValueError(f"{where}: checkpoint format {record.format!r} is not {_FORMAT}")
    if record.partition != partition:
        raise ValueError(f"{where}: holds partition {record.partition}, not {partition}")
    return Checkpoint(record.partition, record.offsets, record.detectors, record.saved_at,
                      record.sources, record.source_items, record.formats, record.aligned)


def _check_key(signing_key: bytes | None) -> None:
    if signing_key is not None and len(signing_key) < MIN_KEY_BYTES:
        raise ValueError(f"state signing key must have at least {MIN_KEY_BYTES} bytes")


def _refuse(on_reject: RejectHook | None, record: str, reason: str) -> None:
    if on_reject is not None:
        on_reject(record, reason)


class LocalStateStore:
    """Checkpoints as one file per state partition in ``directory`` (atomic replace).

    A file is ``MAGIC`` (says signed or not), a 64-hex-digit tag, then the body:
    the generation (8 bytes, big endian) and the checkpoint record. The tag
    is the HMAC of the body bound to (group, directory, partition) when
    ``signing_key`` is given, else the body's SHA-256 (integrity only).
    """

    _SIGNED = b"mlwatchd-checkpoint/2 hmac-sha256\n"
    _UNSIGNED = b"mlwatchd-checkpoint/2 sha256\n"

    def __init__(self, directory: str | os.PathLike[str], group_id: str,
                 signing_key: bytes | None = None,
                 on_reject: RejectHook | None = None) -> None:
        _check_key(signing_key)
        # Checkpoints decide what the detectors believe: only this user may
        # write where they live (UnsafeStateFile, one line, otherwise).
        private_dir(Path(directory))
        self.directory = private_dir(Path(directory) / _safe(group_id))
        self.group = group_id
        self._key = signing_key
        self._on_reject = on_reject
        #: partition -> highest generation seen (loaded or saved) by this process
        self._generations: dict[int, int] = {}

    def _path(self, partition: int) -> Path:
        return self.directory / f"{partition_name(partition)}.ckpt"

    def _context(self, partition: int) -> list[str]:
        return [f"checkpoint/{_ENVELOPE}", self.group, "local", partition_name(partition)]

    def _tag(self, partition: int, body: bytes) -> bytes:
        if self._key is None:
            return hashlib.sha256(body).hexdigest().encode()
        return record_mac(self._key, self._context(partition), body).encode()

    def _read(self, partition: int, limit: int = -1) -> bytes | None:
        """The file of ``partition`` (at most ``limit`` bytes), None if there is none.

        The file must pass :func:`private_file` (a regular file of this user,
        not writable by others) and is opened without following a symlink;
        otherwise ValueError, counted as ``unsafe_file``.
        """
        path = self._path(partition)
        if not os.path.lexists(path):
            return None
        try:
            private_file(path)
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except (UnsafeStateFile, OSError) as exc:
            _refuse(self._on_reject, "checkpoint", "unsafe_file")
            raise ValueError(f"{path}: {exc}") from None
        with os.fdopen(fd, "rb") as handle:
            return handle.read(limit)

    def save(self, checkpoint: Checkpoint) -> int:
        """Write ``checkpoint``; returns its size in bytes (OSError if it cannot be)."""
        partition = checkpoint.partition
        try:
            current = self._file_generation(partition)
        except ValueError as exc:  # a planted or unsafe file: never replaced silently
            raise OSError(str(exc)) from None
        gen = max(self._generations.get(partition, 0), current) + 1
        body = struct.pack(">Q", gen) + _encode(checkpoint)
        magic = self._UNSIGNED if self._key is None else self._SIGNED
        # mkstemp: a new random name, O_EXCL, 0600, in a directory only we can write.
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".ckpt-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(magic + self._tag(partition, body) + body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path(partition))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._generations[partition] = gen
        return len(body)

    def _file_generation(self, partition: int) -> int:
        """The generation the current file claims (unverified: used to number, not to trust)."""
        head = self._read(partition, len(self._SIGNED) + 64 + 8)
        if head is None:
            return 0
        for magic in (self._SIGNED, self._UNSIGNED):
            if head.startswith(magic) and len(head) >= len(magic) + 72:
                gen = int(struct.unpack(">Q", head[len(magic) + 64:len(magic) + 72])[0])
                return gen if gen < _MAX_GEN else 0
        return 0

    def load(self, partition: int) -> Checkpoint | None:
        """The last checkpoint of ``partition``, or None; ValueError if it cannot be used."""
        path = self._path(partition)
        raw = self._read(partition)
        if raw is None:
            return None
        body = self._verified_body(raw, partition, str(path))
        gen = int(struct.unpack(">Q", body[:8])[0])
        if gen < self._generations.get(partition, 0):
            _refuse(self._on_reject, "checkpoint", "rollback")
            raise ValueError(f"{path}: generation {gen} is older than generation "
                             f"{self._generations[partition]} already seen (rolled back?)")
        checkpoint = _decode(body[8:], str(path), partition)
        self._generations[partition] = gen
        return checkpoint

    def _verified_body(self, raw: bytes, partition: int, where: str) -> bytes:
        expected = self._UNSIGNED if self._key is None else self._SIGNED
        other = self._SIGNED if self._key is None else self._UNSIGNED
        if raw.startswith(expected):
            start = len(expected)
            tag, body = raw[start:start + 64], raw[start + 64:]
            if len(body) >= 8 and (verify_mac(self._key, self._context(partition), body, tag)
                                   if self._key is not None
                                   else tag == hashlib.sha256(body).hexdigest().encode()):
                return body
            _refuse(self._on_reject, "checkpoint", "bad_mac")
            raise ValueError(f"{where}: checkpoint does not verify (written with another "
                             "state.signing_key, for another partition or group, or "
                             "tampered with)")
        if raw.startswith(other):
            reason = "unsigned" if self._key is not None else "signed"
            _refuse(self._on_reject, "checkpoint", reason)
            raise ValueError(f"{where}: checkpoint is {reason} but state.signing_key is "
                             f"{'set' if self._key is not None else 'not set'}")
        _refuse(self._on_reject, "checkpoint", "format")
        raise ValueError(f"{where}: not a checkpoint of format {_ENVELOPE} (written by an "
                         "older mlwatchd?): state is relearnt")

    def close(self) -> None:
        pass


class KafkaStateStore:
    """Checkpoints in a compacted Kafka topic, chunked and authenticated.

    Layout, for consumer group ``g`` and state partition ``p3``:

    - chunks keyed ``g/p3/<slot>/<i>`` (slot = generation % 2), each at most
      ``chunk_bytes``, with a ``mlwatchd.gen`` header;
    - then a manifest keyed ``g/p3``: JSON with generation, slot, chunk count,
      offset of the first chunk, SHA-256 of the whole payload and of each
      chunk, and a ``mlwatchd-mac`` header: the HMAC-SHA256 of the manifest's
      raw bytes bound to (group, state topic, state partition).

    Every message of one state partition goes to the same topic partition
    (CRC32 of the manifest key), so loading reads one partition: backwards
    from its end to the newest manifest that verifies (the highest
    generation among the first window of verified manifests), then forwards
    from the first chunk. Compaction keeps the newest manifest and the
    newest chunk of each key; the two slots mean the chunks that manifest
    names are never overwritten by a newer, unfinished write.
    """

    def __init__(self, kafka: Any, topic: str, group_id: str, signing_key: bytes,
                 chunk_bytes: int = 512 * 1024, timeout_s: float = 30.0,
                 on_reject: RejectHook | None = None) -> None:
        from kafka import KafkaConsumer, KafkaProducer

        from daemon.kafka_io import client_config

        _check_key(signing_key)
        self.topic, self.group = topic, group_id
        self._key = signing_key
        self._on_reject = on_reject
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
        #: manifest key -> highest generation this process has seen (loaded or saved);
        #: a manifest below it is a rollback and refused.
        self._generations: dict[str, int] = {}

    # -- layout ----------------------------------------------------------

    def _manifest_key(self, partition: int) -> str:
        return f"{self.group}/{partition_name(partition)}"

    def _context(self, partition: int) -> list[str]:
        return [f"manifest/{_ENVELOPE}", self.group, self.topic, partition_name(partition)]

    def _topic_partition(self, key: str) -> Any:
        from kafka import TopicPartition

        parts = self._reader.partitions_for_topic(self.topic)
        if not parts:
            raise OSError(f"state topic {self.topic!r} does not exist")
        return TopicPartition(self.topic, zlib.crc32(key.encode()) % len(parts))

    # -- save --------------------------------------------------------------

    def save(self, checkpoint: Checkpoint) -> int:
        payload = _encode(checkpoint)
        partition = checkpoint.partition
        key = self._manifest_key(partition)
        tp = self._topic_partition(key)
        if key not in self._generations:
            found = self._newest_manifest(tp, partition)
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
        manifest = orjson.dumps({
            "v": _ENVELOPE, "key": key, "gen": gen, "slot": slot, "chunks": len(pieces),
            "first": first, "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
            "chunk_sha256": [hashlib.sha256(piece).hexdigest() for piece in pieces],
        })
        mac = record_mac(self._key, self._context(partition), manifest).encode()
        try:
            self._producer.send(self.topic, key=key.encode(), value=manifest,
                                headers=[(MAC_HEADER, mac)],
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
        found = self._newest_manifest(tp, partition)
        if found is None:
            self._generations.setdefault(key, 0)
            return None
        manifest, end = found
        gen = manifest["gen"]
        where = f"{self.topic}[{tp.partition}] {key} gen {gen}"
        floor = self._generations.get(key, 0)
        if gen < floor:
            _refuse(self._on_reject, "manifest", "rollback")
            raise ValueError(f"{where}: older than generation {floor} already seen "
                             "(rolled back?)")
        self._generations[key] = gen
        digests: list[str] = manifest["chunk_sha256"]
        wanted = {f"{key}/{manifest['slot']}/{i}".encode(): i for i in range(len(digests))}
        gen_header = str(gen).encode()
        pieces: dict[int, bytes] = {}
        for message in self._read(tp, manifest["first"], end):
            index = wanted.get(message.key)
            if index is None or index in pieces \
                    or header(message.headers, "mlwatchd.gen") != gen_header:
                continue
            value = message.value or b""
            if hashlib.sha256(value).hexdigest() == digests[index]:  # else: not ours, skip
                pieces[index] = value
                if len(pieces) == len(wanted):
                    break
        if len(pieces) != len(wanted):
            raise ValueError(f"{where}: {len(wanted) - len(pieces)} of {len(wanted)} "
                             "chunks are missing")
        payload = b"".join(pieces[i] for i in range(len(wanted)))
        if hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
            raise ValueError(f"{where}: chunks do not match the manifest's SHA-256")
        return _decode(payload, where, partition)

    def _verified_manifest(self, message: Any, partition: int) -> dict[str, Any] | str:
        """The manifest in ``message`` if it verifies and is well formed, else the reason."""
        value = message.value or b""
        tag = header(message.headers, MAC_HEADER)
        if tag is None:
            return "unsigned"
        if not verify_mac(self._key, self._context(partition), value, tag):
            return "bad_mac"
        try:  # signed by a holder of the key: parsed, and still checked field by field
            manifest = orjson.loads(value)
        except orjson.JSONDecodeError:
            return "malformed"
        if not isinstance(manifest, dict):
            return "malformed"
        ints = ("v", "gen", "slot", "first", "bytes")
        digests = manifest.get("chunk_sha256")
        if not all(type(manifest.get(k)) is int and manifest[k] >= 0 for k in ints) \
                or manifest["v"] != _ENVELOPE or manifest.get("key") != message.key.decode() \
                or not 0 < manifest["gen"] < _MAX_GEN or manifest["slot"] != manifest["gen"] % 2 \
                or not isinstance(manifest.get("sha256"), str) \
                or not isinstance(digests, list) or not digests \
                or not all(isinstance(d, str) for d in digests):
            return "malformed"
        return manifest

    def _newest_manifest(self, tp: Any, partition: int) -> tuple[dict[str, Any], int] | None:
        """The newest verified manifest of ``partition`` in ``tp`` and the offset after it.

        Records under the manifest key that do not verify are skipped and
        counted. Among the verified manifests of the first window that holds
        any, the highest generation wins (a replayed old manifest appended
        after the real one does not roll the state back).
        """
        key = self._manifest_key(partition)
        begin = self._reader.beginning_offsets([tp])[tp]
        end = self._reader.end_offsets([tp])[tp]
        want = key.encode()
        stop, window = end, 64
        rejected: dict[str, int] = {}
        try:
            while stop > begin:
                start = max(begin, stop - window)
                newest: tuple[dict[str, Any], int] | None = None
                for message in self._read(tp, start, stop):
                    if message.key != want:
                        continue
                    got = self._verified_manifest(message, partition)
                    if isinstance(got, str):
                        rejected[got] = rejected.get(got, 0) + 1
                        _refuse(self._on_reject, "manifest", got)
                    elif newest is None or got["gen"] >= newest[0]["gen"]:
                        newest = (got, message.offset)
                if newest is not None:
                    return newest
                stop, window = start, window * 4
            return None
        finally:
            if rejected:
                log.warning("state_records_rejected", key=key, record="manifest", **rejected)

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
    pipeline: Any, partition: StatePartition, fingerprints: Mapping[str, str]
) -> dict[str, tuple[str, bytes]]:
    return {name: (fingerprints.get(name, ""), state)
            for name, state in pipeline.snapshot(partition).items()}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "group"
