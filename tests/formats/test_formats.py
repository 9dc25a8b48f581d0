"""Behaviour of the formats beyond their fixtures: the join, privacy, the registry."""

from __future__ import annotations

import doctest
import importlib
import json
from pathlib import Path

import msgspec
import pytest

from daemon.formats import FORMATS, DeadLetter, Decoded, FormatConfigError, make_format
from detectors.access.privilege_grants import PrivilegeGrantDetector
from detectors.events import decode_event
from detectors.findings import Source

from .fixture_io import ROOT, read_fixture

REQ = b"org.kubeflow.serving.inference.request"
RESP = b"org.kubeflow.serving.inference.response"


def _ce(ce_id: str, kind: bytes, time: str) -> list[tuple[str, bytes]]:
    return [("ce_id", ce_id.encode()), ("ce_type", kind), ("ce_time", time.encode()),
            ("ce_inferenceservicename", b"iris"), ("ce_namespace", b"prod")]


def _request(fmt, ce_id: str, t: str, ts_ms: int | None = None) -> list:  # type: ignore[no-untyped-def]
    return fmt.decode(b'{"instances": [[1, 2]]}', _ce(ce_id, REQ, t), ts_ms)


def _response(fmt, ce_id: str, t: str, ts_ms: int | None = None) -> list:  # type: ignore[no-untyped-def]
    return fmt.decode(b'{"predictions": [1]}', _ce(ce_id, RESP, t), ts_ms)


def test_kserve_counts_requests_whose_response_never_came_within_max_wait() -> None:
    fmt = make_format("kserve", {"max_wait_s": 30})
    assert _request(fmt, "lost", "2026-01-01T00:00:00Z") == []
    assert _request(fmt, "late", "2026-01-01T00:00:20Z") == []
    # 40 s on: "lost" waited past 30 s and is counted; "late" is still pending
    assert _request(fmt, "other", "2026-01-01T00:00:40Z") == []
    assert fmt.stats()["unanswered_requests"] == 1
    assert len(_response(fmt, "late", "2026-01-01T00:00:41Z")) == 1
    assert _response(fmt, "lost", "2026-01-01T00:00:42Z") == []  # too late: pending alone
    stats = fmt.stats()
    assert (stats["joined"], stats["pending"]) == (1, 2)


def test_kserve_join_is_bounded_in_entries_and_evicts_the_oldest() -> None:
    fmt = make_format("kserve", {"max_pending": 3})
    for i in range(5):
        _request(fmt, f"r{i}", "2026-01-01T00:00:00Z")
    stats = fmt.stats()
    assert (stats["pending"], stats["unanswered_requests"], stats["evicted"]) == (3, 2, 2)
    assert _response(fmt, "r0", "2026-01-01T00:00:01Z") == []   # evicted
    assert len(_response(fmt, "r4", "2026-01-01T00:00:01Z")) == 1


def test_kserve_join_state_survives_a_json_snapshot_and_restore() -> None:
    fmt = make_format("kserve", {})
    _request(fmt, "a", "2026-01-01T00:00:00Z")
    state = json.loads(json.dumps(fmt.snapshot()))   # plain JSON: checkpointable anywhere
    restored = make_format("kserve", {})
    restored.restore(state)
    [event] = _response(restored, "a", "2026-01-01T00:00:00.250Z")
    assert isinstance(event, Decoded)
    assert (event.event.model_id, event.event.latency_ms) == ("prod/iris", 250.0)  # type: ignore[union-attr]
    assert restored.stats()["joined"] == 1


def test_a_malformed_join_state_is_refused_and_leaves_the_state_unchanged() -> None:
    fmt = make_format("kserve", {})
    _request(fmt, "a", "2026-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="state"):
        fmt.restore({"join": {"version": 1, "now": 0, "counters": {}, "pending": [[1, 2]]}})
    with pytest.raises(ValueError, match="version"):
        fmt.restore({"join": {"version": 99}})
    assert fmt.stats()["pending"] == 1
    assert len(_response(fmt, "a", "2026-01-01T00:00:01Z")) == 1


def test_oip_split_request_and_response_join_by_id_and_survive_restore() -> None:
    fmt = make_format("oip", {})
    request = {"id": "q1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                       "data": [1, 2, 3, 4]}]}
    response = {"id": "q1", "model_name": "m", "outputs": [
        {"name": "p", "shape": [2, 2], "datatype": "FP32", "data": [0.2, 0.8, 0.6, 0.4]}]}
    assert fmt.decode(json.dumps(request).encode(), [], 1767225600000) == []
    restored = make_format("oip", {})
    restored.restore(json.loads(json.dumps(fmt.snapshot())))
    events = restored.decode(json.dumps(response).encode(), [], 1767225600050)
    assert [(r.item, r.event.prediction) for r in events] == [(0, 1), (1, 0)]  # type: ignore[union-attr]


def test_litellm_keeps_no_prompt_or_completion_text() -> None:
    _, messages = read_fixture(ROOT / "litellm" / "standard_logging_payload.jsonl")
    fmt = make_format("litellm", {"text_features": True})
    secrets = ("IBAN", "DE89", "Customer 4711 made", "secret prompt", "helpful assistant")
    for message in messages:
        for result in fmt.decode(message.value, message.headers, message.timestamp_ms):
            if isinstance(result, Decoded):
                encoded = msgspec.json.encode(result.event).decode()
                assert not any(s in encoded for s in secrets), encoded
    first = fmt.decode(messages[0].value, [], None)[0]
    assert isinstance(first, Decoded)
    features = first.event.features  # type: ignore[union-attr]
    assert isinstance(features, dict) and features["prompt_chars"] > 50


def _grants(name: str, path: Path) -> list[tuple[str, bool]]:
    """(actor, self_grant) of each privilege-grant finding over a fixture's events."""
    options, messages = read_fixture(path)
    fmt = make_format(name, options)
    detector = PrivilegeGrantDetector(warmup_seconds=1e9)
    found = []
    for offset, message in enumerate(messages):
        for r in fmt.decode(message.value, message.headers, message.timestamp_ms):
            if isinstance(r, Decoded) and type(r.event).__name__ == "AuditEvent":
                for f in detector.process(r.event, Source("t", 0, offset)) or []:
                    found.append((f.entity.id, bool(f.evidence["self_grant"]), f.severity))
    return found  # type: ignore[return-value]


def test_cloudtrail_self_grants_reach_the_privilege_grant_detector_as_self_grants() -> None:
    found = _grants("cloudtrail", ROOT / "cloudtrail" / "log_file_records.jsonl")
    assert found == [
        ("arn:aws:iam::111122223333:user/mallory", True, "critical"),     # AdministratorAccess
        ("arn:aws:sts::111122223333:assumed-role/ml-deployer/ci-session", True, "critical"),
        ("arn:aws:iam::111122223333:user/gina", True, "medium"),          # tried, denied
    ]


def test_k8s_self_binding_reaches_the_privilege_grant_detector_as_a_self_grant() -> None:
    found = _grants("k8s-audit", ROOT / "k8s-audit" / "audit_log.jsonl")
    assert found == [("alice@example.com", True, "critical")]


def test_contract_format_gives_exactly_what_decode_event_gives() -> None:
    raw = (b'{"ts": 1767225600, "model_id": "m", "request_id": "r", "principal": "p",'
           b' "features": [1.5], "prediction": "yes"}')
    [result] = make_format("contract", {"event_type": "inference"}).decode(raw, [], None)
    assert isinstance(result, Decoded) and result.item is None
    assert result.event == decode_event(raw, "inference")


def test_unknown_format_and_bad_options_fail_with_one_line_each() -> None:
    with pytest.raises(FormatConfigError, match="unknown format 'splunk'; known: cloudtrail"):
        make_format("splunk")
    with pytest.raises(FormatConfigError) as info:
        make_format("kserve", {"model_id_template": "{cluster}/{name}", "max_pending": 0,
                               "colour": "red"})
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("format kserve: ") for line in lines)
    assert any("model_id_template" in line and "cluster" in line for line in lines)


def test_dead_letters_name_their_format() -> None:
    for name in FORMATS:
        [dead] = make_format(name).decode(b"\xff not json", [("ce_type", RESP)], 0)
        assert isinstance(dead, DeadLetter) and dead.format == name


@pytest.mark.parametrize("module", [
    "base", "contract", "tensors", "join", "kserve", "oip", "litellm", "cloudtrail",
    "k8s_audit", "__init__",
])
def test_format_module_doctests_pass(module: str) -> None:
    name = "daemon.formats" if module == "__init__" else f"daemon.formats.{module}"
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0


def test_kserve_model_id_template_and_missing_principal_policy() -> None:
    fmt = make_format("kserve", {"model_id_template": "{name}-{component}",
                                 "default_principal": None})
    _request(fmt, "a", "2026-01-01T00:00:00Z")
    [dead] = _response(fmt, "a", "2026-01-01T00:00:01Z")
    assert isinstance(dead, DeadLetter) and dead.reason == "missing_principal"
    fmt = make_format("kserve", {"model_id_template": "{name}-{endpoint}"})
    _request(fmt, "b", "2026-01-01T00:00:00Z")
    [ok] = _response(fmt, "b", "2026-01-01T00:00:01Z")
    assert isinstance(ok, Decoded)
    assert (ok.event.model_id, ok.event.principal) == ("iris-", "anonymous")  # type: ignore[union-attr]


def test_a_far_future_timestamp_does_not_expire_every_pending_request() -> None:
    fmt = make_format("kserve", {"max_wait_s": 30})
    _request(fmt, "a", "2026-01-01T00:00:00Z")
    _request(fmt, "attacker", "9999-12-31T23:59:59Z")
    assert fmt.stats()["unanswered_requests"] == 0
    assert len(_response(fmt, "a", "2026-01-01T00:00:01Z")) == 1


@pytest.mark.parametrize("name", ["kserve", "oip"])
def test_joining_formats_share_bounds_state_and_stats(name: str) -> None:
    fmt = make_format(name, {"max_pending": 3, "max_wait_s": 5, "max_pending_bytes": 2048})
    join = fmt.join  # type: ignore[attr-defined]
    assert (join.max_pending, join.max_wait_s, join.max_pending_bytes) == (3, 5, 2048)
    state = json.loads(json.dumps(fmt.snapshot()))
    assert set(fmt.stats()) >= {"joined", "unanswered_requests", "pending"}
    other = make_format(name, {})
    other.restore(state)
    assert other.snapshot() == state
    with pytest.raises(ValueError, match=f"^{name} state is malformed"):
        other.restore({"skipped": 1})
    with pytest.raises(ValueError, match=f"^{name} state is malformed: no join"):
        other.restore({"join": [1]})


def test_kserve_keeps_its_skipped_count_beside_the_join() -> None:
    fmt = make_format("kserve", {})
    fmt.decode(b"{}", [("ce_type", b"dev.knative.other"), ("ce_id", b"x")], 0)
    assert fmt.stats()["skipped"] == 1
    restored = make_format("kserve", {})
    restored.restore(json.loads(json.dumps(fmt.snapshot())))
    assert restored.stats()["skipped"] == 1
