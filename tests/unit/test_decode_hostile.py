"""Hostile input to the decoder, the daemon's decode step and replay (issue #12, items 1, 2, 6a).

Each message here once stopped the daemon (an exception other than BadEvent
left the consumer loop) or broke a finding later; now each is one dead letter
with a reason, and everything around it goes on.
"""

from __future__ import annotations

import hashlib
import time
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from kafka import TopicPartition

from daemon.kafka_io import (
    DLQ_HEADERS,
    TRUNCATED_HEADERS,
    OutRecord,
    dlq_record,
    truncated_dead_letter,
)
from daemon.replay import replay
from daemon.runtime import Daemon
from daemon.settings import ConfigError, Settings, load
from detectors.events import (
    MAX_ATTRIBUTE_DEPTH,
    BadEvent,
    check_ts_window,
    decode_any,
    decode_event,
    parse_ts,
)
from detectors.pipeline import Pipeline

NOW = time.time()
GOOD = {"ts": NOW, "model_id": "m", "request_id": "r", "principal": "p",
        "features": [1.0, 2.0], "prediction": 1}


def _inference(**fields: object) -> bytes:
    return orjson.dumps({**GOOD, **fields})


def _raw(body: str) -> bytes:
    """An inference event whose ``ts`` (or more) is spelled out as raw JSON."""
    return ('{"model_id":"m","request_id":"r","principal":"p","features":[1],'
            '"prediction":1,' + body + "}").encode()


def _nested_objects(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def _reason(raw: bytes, kind: str = "inference") -> str:
    with pytest.raises(BadEvent) as caught:
        decode_event(raw, kind)
    return caught.value.reason


# -- item 1: one message must not stop the daemon ------------------------------

def test_a_400_digit_integer_ts_is_a_bad_event_not_an_overflow_error() -> None:
    assert _reason(_raw('"ts":' + "9" * 400)) == "ts_out_of_range"
    assert _reason(_raw('"ts":' + "9" * 400 + ".5")) == "ts_out_of_range"


def test_attributes_nested_1000_deep_are_too_deep_not_a_recursion_error() -> None:
    assert _reason(_raw('"ts":1767225600,"attributes":' + _nested_objects(1000))) == "too_deep"
    lists = '{"a":' + "[" * 1000 + "]" * 1000 + "}"
    assert _reason(_raw('"ts":1767225600,"attributes":' + lists)) == "too_deep"


def test_an_unknown_field_nested_100000_deep_is_too_deep() -> None:
    # unknown fields are skipped by msgspec recursively, past any type bound
    deep = "[" * 100_000 + "]" * 100_000
    assert _reason(_raw('"ts":1767225600,"extra":' + deep)) == "too_deep"
    with pytest.raises(BadEvent) as caught:
        decode_any(('{"event_type":"audit","ts":1767225600,"x":' + deep + "}").encode())
    assert caught.value.reason == "too_deep"


def test_attributes_may_nest_up_to_the_limit_and_no_further() -> None:
    at_limit = _raw('"ts":1767225600,"attributes":' + _nested_objects(MAX_ATTRIBUTE_DEPTH))
    assert decode_event(at_limit, "inference").attributes is not None
    over = _raw('"ts":1767225600,"attributes":' + _nested_objects(MAX_ATTRIBUTE_DEPTH + 1))
    assert _reason(over) == "too_deep"


@pytest.mark.parametrize("field", ["prediction", "label"])
def test_integers_beyond_64_bits_are_invalid_values(field: str) -> None:
    raw = orjson.dumps(GOOD)[:-1] + f',"{field}":'.encode() + b"9" * 30 + b"}"
    assert _reason(raw) == "invalid_value"


def test_huge_counts_and_attribute_integers_are_invalid_values() -> None:
    audit = {"ts": NOW, "actor": "a", "action": "dataset.read", "resource": "r",
             "outcome": "success"}
    raw = orjson.dumps(audit)[:-1] + b',"bytes":' + b"9" * 25 + b"}"
    assert _reason(raw, "audit") == "invalid_value"
    raw = orjson.dumps(audit)[:-1] + b',"attributes":{"n":' + b"9" * 400 + b"}}"
    assert _reason(raw, "audit") == "invalid_value"


def test_a_megabyte_ts_string_is_refused_quickly() -> None:
    started = time.perf_counter()
    assert _reason(_inference(ts="2026-01-01T00:00:00Z" + " " * 1_000_000)) == "invalid_value"
    assert time.perf_counter() - started < 0.05


def test_decode_refuses_input_over_max_bytes_unread() -> None:
    with pytest.raises(BadEvent) as caught:
        decode_event(b"x" * 2000, "inference", max_bytes=1000)
    assert caught.value.reason == "too_large"
    with pytest.raises(BadEvent) as caught:
        decode_any(b"x" * 2000, max_bytes=1000)
    assert caught.value.reason == "too_large"


def test_any_other_exception_while_decoding_becomes_undecodable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth: a bug we do not know of yet still costs one message only."""
    import detectors.events as events

    class Exploding:
        def decode(self, raw: bytes) -> object:
            raise OverflowError("int too large to convert to float")

    monkeypatch.setitem(events._DECODERS, "audit", Exploding())
    with pytest.raises(BadEvent) as caught:
        decode_event(b"{}", "audit")
    assert caught.value.reason == "undecodable"
    assert "OverflowError" in caught.value.detail


# -- item 6a: timestamps outside a sane range ---------------------------------

@pytest.mark.parametrize("ts", [
    "9999-12-31T23:59:59Z",            # the case: broke building its finding
    "2100-01-01T00:00:00Z",            # first second past the hard bound
    "0001-01-01T00:00:00+14:00",       # before the epoch (and before year 1 in UTC)
    "1969-12-31T23:59:59Z",
])
def test_ts_strings_outside_1970_to_2100_are_out_of_range(ts: object) -> None:
    assert _reason(_inference(ts=ts)) == "ts_out_of_range"


@pytest.mark.parametrize("ts", [1e308, 4_102_444_800, 2**63 - 1, 4_102_444_800_000])
def test_ts_numbers_outside_1970_to_2100_are_out_of_range(ts: object) -> None:
    assert _reason(_inference(ts=ts)) == "ts_out_of_range"


def test_ts_inside_the_hard_bounds_decodes_in_seconds_and_milliseconds() -> None:
    assert decode_event(_inference(ts=4_102_444_799), "inference").ts == 4_102_444_799.0
    assert decode_event(_inference(ts=1_767_225_600_000), "inference").ts == 1_767_225_600.0
    assert parse_ts("2099-12-31T23:59:59Z") == 4_102_444_799.0


def test_parse_ts_refuses_python_integers_too_large_for_a_float() -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_ts(10**400)


def test_ts_window_around_now() -> None:
    check_ts_window(NOW + 3600, NOW, 86_400, 10 * 86_400)
    with pytest.raises(BadEvent, match="ahead of now") as caught:
        check_ts_window(NOW + 2 * 86_400, NOW, 86_400, None)
    assert caught.value.reason == "ts_out_of_range"
    with pytest.raises(BadEvent, match="before now"):
        check_ts_window(NOW - 11 * 86_400, NOW, None, 10 * 86_400)
    check_ts_window(NOW + 1e9, NOW, None, None)  # both bounds off


def test_input_settings_defaults_env_off_and_bad_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    settings = Settings()
    assert settings.input.max_future_skew_s == 86_400
    assert settings.input.max_age_s == pytest.approx(10 * 365.25 * 86_400)
    monkeypatch.setenv("MLWATCHD_INPUT__MAX_FUTURE_SKEW_S", "off")
    assert Settings().input.max_future_skew_s is None
    monkeypatch.delenv("MLWATCHD_INPUT__MAX_FUTURE_SKEW_S")
    config = tmp_path / "c.yaml"
    config.write_text("input:\n  max_age_s: -5\n  max_future_skew_s: soon\n")
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert sum("input." in line for line in caught.value.problems) == 2, caught.value.problems


def test_max_request_size_setting_and_its_default(tmp_path: Path) -> None:
    assert Settings().kafka.producer_max_request_size == 1_048_576 + 64 * 1024
    kafka = {"max_request_size": 100_000, "max_message_bytes": 90_000}
    assert Settings(kafka=kafka).kafka.producer_max_request_size == 100_000
    config = tmp_path / "c.yaml"
    config.write_text("kafka:\n  max_request_size: 1048576\n")  # max_message_bytes as large
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert caught.value.problems == ["kafka: max_request_size must exceed max_message_bytes by "
                                     "at least 4096 bytes (lower max_message_bytes to match the "
                                     "brokers' message.max.bytes)"]


# -- the daemon's decode step -------------------------------------------------

Message = namedtuple("Message", "offset key value headers timestamp")


def _decoded(daemon: Daemon, values: Sequence[bytes | None]) -> tuple[list[int], dict[int, str]]:
    """Offsets of the events the daemon accepts, and the reason per dead-lettered offset."""
    dead: list[OutRecord] = []
    messages = [Message(i, b"k", v, [], None) for i, v in enumerate(values)]
    kept = [src.offset for _, src in
            daemon.intake.decode(TopicPartition("ml.inference", 0), messages, dead)]
    reasons = {}
    for _, _, _, headers in dead:
        h = dict(headers or ())
        reasons[int(h[DLQ_HEADERS[2]])] = h[DLQ_HEADERS[3]].decode()
    return kept, reasons


def test_daemon_dead_letters_each_hostile_message_and_keeps_the_good_ones() -> None:
    daemon = Daemon(Settings(detectors={}))
    hostile = [
        _raw('"ts":' + "9" * 400),
        _raw('"ts":1767225600,"attributes":' + _nested_objects(1000)),
        _inference(ts="9999-12-31T23:59:59Z"),
        _inference(ts=NOW + 3 * 86_400),               # ahead of now by more than a day
        _inference(ts=NOW - 11 * 365.25 * 86_400),     # older than ten years
    ]
    values = [_inference(request_id=f"g{i}") for i in range(3)]
    stream = [values[0], *hostile[:3], values[1], *hostile[3:], values[2]]
    kept, reasons = _decoded(daemon, stream)
    assert kept == [0, 4, 7]
    assert reasons == {1: "ts_out_of_range", 2: "too_deep", 3: "ts_out_of_range",
                       5: "ts_out_of_range", 6: "ts_out_of_range"}
    assert daemon.metrics.dlq._value.get() == 5


def test_daemon_window_is_configurable() -> None:
    daemon = Daemon(Settings(detectors={}, input={"max_future_skew_s": None, "max_age_s": None}))
    kept, reasons = _decoded(daemon, [_inference(ts=NOW + 3 * 86_400), _inference(ts=1000)])
    assert kept == [0, 1] and reasons == {}


def test_daemon_dead_letters_whatever_decoding_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth in the loop itself: not even a RecursionError escapes."""
    from daemon.formats.contract import ContractFormat

    def exploding(self: object, value: bytes, headers: object, timestamp_ms: object) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    def exploding_fast(value: bytes) -> object:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(ContractFormat, "decode", exploding)
    # the loop's hot path for contract topics falls back to decode, which raises too
    monkeypatch.setattr(ContractFormat, "fast_path", lambda self: (exploding_fast, 1 << 20))
    kept, reasons = _decoded(Daemon(Settings(detectors={})), [_inference()])
    assert kept == [] and reasons == {0: "undecodable"}


# -- replay -------------------------------------------------------------------

def test_replay_counts_hostile_lines_and_goes_on(tmp_path: Path) -> None:
    good = orjson.dumps({"event_type": "audit", "ts": 1_767_225_600, "actor": "a",
                         "action": "dataset.read", "resource": "r", "outcome": "success"})
    lines = [
        good,
        b'{"event_type":"audit","actor":"a","action":"x","resource":"r","outcome":"success",'
        b'"ts":' + b"9" * 400 + b"}",
        b'{"event_type":"audit","ts":1,"attributes":' + _nested_objects(1000).encode() + b"}",
        orjson.dumps({**orjson.loads(good), "ts": "9999-12-31T23:59:59Z"}),
        b"x" * 5000,
        good,
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, stats = replay(Pipeline([]), [path], max_bytes=4096)
    assert stats.events == 2 and stats.bad_lines == 4


# -- item 2: the dead letter that is too large to send --------------------------

def test_a_truncated_dead_letter_keeps_its_identity() -> None:
    value = b"v" * 2_000_000
    theirs = [("trace", b"t" * 20_000)]
    rec = dlq_record("dlq", "ml.inference", 3, 42, b"k" * 5000, value, theirs, "too_large", "big")
    topic, key, cut, cut_headers = truncated_dead_letter(rec)
    headers = cut_headers or []
    names = [name for name, _ in headers]
    h = dict(headers)
    assert topic == "dlq" and cut == value[:8192] and key == b"k" * 1024
    assert h[TRUNCATED_HEADERS[0]] == b"2000000"
    assert h[TRUNCATED_HEADERS[1]] == hashlib.sha256(value).hexdigest().encode()
    assert "trace" not in names, "20 KB of the message's own headers do not fit"
    assert tuple(names[-len(DLQ_HEADERS):]) == DLQ_HEADERS
    assert h[DLQ_HEADERS[2]] == b"42" and h[DLQ_HEADERS[3]] == b"too_large"
    small = dlq_record("dlq", "t", 0, 1, None, b"x" * 20_000, [("trace", b"t")], "not_json", "")
    assert dict(truncated_dead_letter(small)[3] or ())["trace"] == b"t"
