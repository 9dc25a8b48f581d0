"""Internal records: MACs bound to their place; local checkpoints signed, never rolled back."""

from __future__ import annotations

import pickle
import shutil

import pytest
from pydantic import ValidationError

from daemon.integrity import record_mac, verify_mac
from daemon.settings import Settings
from daemon.state import Checkpoint, LocalStateStore

KEY = b"0123456789abcdef-state-key"


def _checkpoint(partition: int, tag: int) -> Checkpoint:
    return Checkpoint(partition, {"ml.inference": 100 * tag}, {"det": ("fp", bytes([tag]) * 64)})


class _Rejections:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, record: str, reason: str) -> None:
        self.seen.append((record, reason))


def test_a_mac_verifies_only_in_its_own_context_and_for_its_own_bytes():
    tag = record_mac(KEY, ["manifest/2", "g", "state", "p1"], b'{"gen":3}')
    assert verify_mac(KEY, ["manifest/2", "g", "state", "p1"], b'{"gen":3}', tag)
    assert verify_mac(KEY, ["manifest/2", "g", "state", "p1"], b'{"gen":3}', tag.encode())
    assert not verify_mac(KEY, ["manifest/2", "g", "state", "p0"], b'{"gen":3}', tag)
    assert not verify_mac(KEY, ["manifest/2", "h", "state", "p1"], b'{"gen":3}', tag)
    assert not verify_mac(KEY, ["manifest/2", "g", "state", "p1"], b'{"gen":4}', tag)
    assert not verify_mac(b"another-key-of-16-bytes", ["manifest/2", "g", "state", "p1"],
                          b'{"gen":3}', tag)
    # framing: moving a separator between context parts is another context
    assert not verify_mac(KEY, ["manifest/2", "g/state", "p1"], b'{"gen":3}', tag)
    assert not verify_mac(KEY, ["manifest/2", "g", "state", "p1"], b'{"gen":3}', None)
    assert not verify_mac(KEY, ["manifest/2", "g", "state", "p1"], b'{"gen":3}', b"\xff" * 64)


def test_signed_local_checkpoints_round_trip(tmp_path):
    store = LocalStateStore(tmp_path, "g", KEY)
    store.save(_checkpoint(0, 1))
    store.save(_checkpoint(0, 2))
    got = LocalStateStore(tmp_path, "g", KEY).load(0)
    assert got is not None and got.offsets == {"ml.inference": 200}
    assert b"hmac-sha256" in (tmp_path / "g" / "p0.ckpt").read_bytes()[:64]


def test_a_local_checkpoint_copied_to_another_partition_is_refused(tmp_path):
    store = LocalStateStore(tmp_path, "g", KEY)
    store.save(_checkpoint(1, 7))
    shutil.copy(tmp_path / "g" / "p1.ckpt", tmp_path / "g" / "p0.ckpt")
    rejected = _Rejections()
    with pytest.raises(ValueError, match="does not verify"):
        LocalStateStore(tmp_path, "g", KEY, on_reject=rejected).load(0)
    assert rejected.seen == [("checkpoint", "bad_mac")]


def test_a_local_checkpoint_of_another_group_is_refused(tmp_path):
    LocalStateStore(tmp_path, "other", KEY).save(_checkpoint(0, 7))
    (tmp_path / "g").mkdir()
    shutil.copy(tmp_path / "other" / "p0.ckpt", tmp_path / "g" / "p0.ckpt")
    with pytest.raises(ValueError, match="does not verify"):
        LocalStateStore(tmp_path, "g", KEY).load(0)


def test_a_tampered_or_foreign_local_checkpoint_is_refused_before_unpickling(tmp_path):
    store = LocalStateStore(tmp_path, "g", KEY)
    store.save(_checkpoint(0, 1))
    path = tmp_path / "g" / "p0.ckpt"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not verify"):
        LocalStateStore(tmp_path, "g", KEY).load(0)
    LocalStateStore(tmp_path, "g", b"another-key-of-16-bytes").save(_checkpoint(0, 1))
    with pytest.raises(ValueError, match="does not verify"):
        LocalStateStore(tmp_path, "g", KEY).load(0)


def test_an_unsigned_or_old_format_local_checkpoint_is_refused_when_a_key_is_set(tmp_path):
    LocalStateStore(tmp_path, "g").save(_checkpoint(0, 1))  # no key: sha256 only
    rejected = _Rejections()
    signed = LocalStateStore(tmp_path, "g", KEY, on_reject=rejected)
    with pytest.raises(ValueError, match="unsigned"):
        signed.load(0)
    # the format of earlier releases: a bare pickle, whatever it holds
    (tmp_path / "g" / "p0.ckpt").write_bytes(pickle.dumps((1, _checkpoint(0, 1))))
    with pytest.raises(ValueError, match="older mlwatchd"):
        signed.load(0)
    with pytest.raises(ValueError, match="older mlwatchd"):
        LocalStateStore(tmp_path, "g").load(0)
    assert rejected.seen == [("checkpoint", "unsigned"), ("checkpoint", "format")]


def test_unsigned_local_checkpoints_still_round_trip_and_detect_corruption(tmp_path):
    store = LocalStateStore(tmp_path, "g")
    store.save(_checkpoint(3, 4))
    got = LocalStateStore(tmp_path, "g").load(3)
    assert got is not None and got.partition == 3
    path = tmp_path / "g" / "p3.ckpt"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="does not verify"):
        LocalStateStore(tmp_path, "g").load(3)


def test_an_older_local_checkpoint_put_back_is_refused_as_a_rollback(tmp_path):
    store = LocalStateStore(tmp_path, "g", KEY)
    store.save(_checkpoint(0, 1))
    path = tmp_path / "g" / "p0.ckpt"
    old = path.read_bytes()
    store.save(_checkpoint(0, 2))
    reader = LocalStateStore(tmp_path, "g", KEY)
    got = reader.load(0)
    assert got is not None and got.offsets == {"ml.inference": 200}
    path.write_bytes(old)  # validly signed, one generation older
    rejected = _Rejections()
    reader._on_reject = rejected
    with pytest.raises(ValueError, match="older than generation 2"):
        reader.load(0)
    assert rejected.seen == [("checkpoint", "rollback")]


def test_generations_continue_across_processes_sharing_a_directory(tmp_path):
    a, b = LocalStateStore(tmp_path, "g", KEY), LocalStateStore(tmp_path, "g", KEY)
    a.save(_checkpoint(0, 1))
    a.save(_checkpoint(0, 2))
    b.save(_checkpoint(0, 3))  # never loaded: numbers on from the file, not from 0
    assert a.load(0) is not None  # generation 3 >= the 2 ``a`` saw itself


def test_a_signing_key_shorter_than_16_bytes_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 16"):
        LocalStateStore(tmp_path, "g", b"short")
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(state={"dir": str(tmp_path), "signing_key": "short"})
    assert Settings(state={"dir": str(tmp_path), "signing_key": "x" * 16}).state.signing_key


class _Engine:
    """The one engine method PeerSeen calls: records what was marked seen."""

    def __init__(self) -> None:
        self.marked: list[tuple[str, str]] = []

    def mark_seen(self, route: str, finding_id: str, now: float) -> bool:
        self.marked.append((route, finding_id))
        return True


def _peer_settings(group: str = "g", topic: str = "mlwatchd.audit") -> Settings:
    return Settings(kafka={"group_id": group}, playbooks={"audit_topic": topic},
                    state={"store": "kafka", "signing_key": KEY.decode()})


def test_peers_take_only_audit_records_signed_for_their_group_and_topic():
    from daemon.integrity import MAC_HEADER
    from daemon.response import PeerSeen, audit_context

    claim = b'{"event":"finding_received","route":"floods","finding_id":"f1"}'
    engine, rejected = _Engine(), _Rejections()
    peers = PeerSeen(_peer_settings(), engine, on_reject=rejected)  # type: ignore[arg-type]

    def signed(settings: Settings) -> list[tuple[str, bytes]]:
        return [(MAC_HEADER, record_mac(KEY, audit_context(settings), claim).encode())]

    peers._take(claim, None)
    peers._take(claim, [(MAC_HEADER, b"0" * 64)])
    peers._take(claim, signed(_peer_settings(group="other")))
    peers._take(claim, signed(_peer_settings(topic="other.audit")))
    peers._take(claim, signed(_peer_settings()) * 2)  # ambiguous: two MAC headers
    assert engine.marked == []
    assert rejected.seen == [("audit", "unsigned"), ("audit", "bad_mac"), ("audit", "bad_mac"),
                             ("audit", "bad_mac"), ("audit", "unsigned")]
    peers._take(claim, signed(_peer_settings()))
    assert engine.marked == [("floods", "f1")] and peers.marked == 1


def test_peers_need_the_signing_key():
    from daemon.response import PeerSeen

    with pytest.raises(ValueError, match="signing_key"):
        PeerSeen(Settings(), _Engine())  # type: ignore[arg-type]
