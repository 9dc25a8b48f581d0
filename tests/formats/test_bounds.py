"""Every format is bounded and never raises, whatever the bytes."""

from __future__ import annotations

import gzip
import json

import pytest

from daemon.formats import FORMATS, DeadLetter, Decoded, make_format

from .fuzz_formats import fuzz


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fuzzed_messages_never_raise_and_events_stay_finite(name: str) -> None:
    seen = fuzz(name, 1500, seed=1)
    assert seen["dead:internal_error"] == 0
    assert seen["event"] > 0 or name == "kserve"  # kserve needs both halves: rarely both survive


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_message_above_max_bytes_is_a_dead_letter(name: str) -> None:
    fmt = make_format(name, {"max_bytes": 1024})
    [dead] = fmt.decode(b'{"pad": "' + b"x" * 2000 + b'"}', [], 0)
    assert isinstance(dead, DeadLetter)
    assert (dead.format, dead.reason) == (name, "too_large")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_json_nested_beyond_the_parser_limit_is_a_dead_letter(name: str) -> None:
    fmt = make_format(name, {})
    results = fmt.decode(b"[" * 100_000 + b"]" * 100_000, [("ce_type", b"x")], 0)
    assert [type(r) for r in results] in ([DeadLetter], [])
    if results:
        assert isinstance(results[0], DeadLetter)
        assert results[0].reason in ("too_deep", "not_an_object", "wrong_type", "missing_field")


def test_kserve_batch_larger_than_max_items_is_refused() -> None:
    fmt = make_format("kserve", {"max_items": 3})
    headers = [("ce_id", b"r"), ("ce_type", b"org.kubeflow.serving.inference.request"),
               ("ce_time", b"2026-01-01T00:00:00Z")]
    [dead] = fmt.decode(json.dumps({"instances": [[1]] * 4}).encode(), headers, None)
    assert isinstance(dead, DeadLetter) and dead.reason == "too_many_items"
    assert fmt.decode(json.dumps({"instances": [[1]] * 3}).encode(), headers, None) == []


def test_cloudtrail_records_beyond_max_items_are_reported_not_dropped() -> None:
    fmt = make_format("cloudtrail", {"max_items": 2})
    record = {"eventTime": "2026-01-01T00:00:00Z", "eventSource": "signin.amazonaws.com",
              "eventName": "ConsoleLogin", "userIdentity": {"arn": "arn:aws:iam::1:user/a"},
              "responseElements": {"ConsoleLogin": "Success"}}
    results = fmt.decode(json.dumps({"Records": [record] * 5}).encode(), [], None)
    assert [type(r) for r in results] == [Decoded, Decoded, DeadLetter]
    assert isinstance(results[2], DeadLetter)
    assert (results[2].reason, results[2].item) == ("too_many_items", 2)
    assert "3 records" in results[2].detail


def test_cloudtrail_reads_a_gzipped_log_file_and_refuses_a_gzip_bomb() -> None:
    record = {"eventTime": "2026-01-01T00:00:00Z", "eventSource": "signin.amazonaws.com",
              "eventName": "ConsoleLogin", "userIdentity": {"arn": "arn:aws:iam::1:user/a"},
              "responseElements": {"ConsoleLogin": "Success"}}
    fmt = make_format("cloudtrail", {"max_bytes": 4096})
    [ok] = fmt.decode(gzip.compress(json.dumps({"Records": [record]}).encode()), [], None)
    assert isinstance(ok, Decoded) and ok.event.action == "login"  # type: ignore[union-attr]
    bomb = gzip.compress(b"{\"Records\": [" + b" " * 2_000_000 + b"]}")
    assert len(bomb) < 4096
    [dead] = fmt.decode(bomb, [], None)
    assert isinstance(dead, DeadLetter) and dead.reason == "too_large"


def test_a_time_after_year_9999_is_a_dead_letter_not_an_event() -> None:
    fmt = make_format("litellm", {})
    payload = {"id": "c", "model": "m", "status": "success", "startTime": 1e300,
               "endTime": 1e300}
    [dead] = fmt.decode(json.dumps(payload).encode(), [], None)
    assert isinstance(dead, DeadLetter) and dead.reason == "invalid_value"


def test_header_names_are_matched_case_insensitively() -> None:
    fmt = make_format("oip", {})
    body = {"ts": 1767225600, "request": {"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
        "response": {"model_name": "m", "outputs": [
            {"name": "y", "shape": [1], "datatype": "INT64", "data": [3]}]}}
    [ok] = fmt.decode(json.dumps(body).encode(), [("X-User", b"bea")], None)
    assert isinstance(ok, Decoded) and ok.event.principal == "bea"  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_an_empty_message_or_tombstone_is_an_empty_dead_letter_as_in_the_runtime(
    name: str,
) -> None:
    fmt = make_format(name, {})
    for value in (b"", None):
        [dead] = fmt.decode(value, [], 0)  # type: ignore[arg-type]
        assert isinstance(dead, DeadLetter) and dead.reason == "empty"
