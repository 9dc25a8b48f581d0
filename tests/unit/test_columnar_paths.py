"""The vectorised batch paths (issue #16) against the per-item code they replaced."""

from __future__ import annotations

import copy
import time
from collections import namedtuple

import msgspec
import numpy as np
import orjson
import pytest
from kafka import TopicPartition

from daemon.formats.contract import ContractFormat
from daemon.intake import Intake
from daemon.kafka_io import OutRecord
from daemon.metrics import Metrics
from detectors.state import EntityTable
from detectors.telemetry.feature_reference import (
    CallerReference,
    FeatureReference,
    bin_counts,
)


def _learn_callers_per_caller(ref: FeatureReference, codes: np.ndarray, principals: list[str],
                              errors: np.ndarray | None, *, limit: int, bins: int) -> None:
    """The per-caller loop ``learn_callers`` was before it became one pass."""
    shape = (len(ref.names), bins + 1)
    uniq, inverse = np.unique(np.asarray(principals, dtype=object), return_inverse=True)
    for i, who in enumerate(uniq.tolist()):
        own = ref.callers.get(who)
        if own is None:
            own = ref.callers.touch(who, lambda: CallerReference(shape))
        if own.rows >= limit:
            continue
        rows = np.flatnonzero(inverse == i)[: limit - own.rows]
        own.counts += bin_counts(codes[rows], bins + 1)
        own.rows += len(rows)
        if errors is not None:
            own.errors += float(errors[rows].sum())


@pytest.mark.parametrize("seed", range(40))
def test_learn_callers_equals_the_per_caller_loop_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d, bins = int(rng.integers(1, 6)), 10
    expected = FeatureReference()
    expected.names = tuple(f"f{i}" for i in range(d))
    expected.callers = EntityTable(int(rng.integers(3, 60)))  # small: evictions happen
    got = copy.deepcopy(expected)
    principals_in_play = int(rng.integers(1, 80))
    for _ in range(8):
        n = int(rng.integers(1, 300))
        codes = rng.integers(0, bins + 1, size=(n, d)).astype(np.int16)
        # zipf: a few callers with many rows (pairwise sums) and many with one or two
        who = [f"p{int(x) % principals_in_play}" for x in rng.zipf(1.5, size=n)]
        errors = None if rng.random() < 0.2 else rng.lognormal(size=n)
        limit = int(rng.integers(1, 100))
        _learn_callers_per_caller(expected, codes, who, errors, limit=limit, bins=bins)
        got.learn_callers(codes, who, errors, limit=limit, bins=bins)
    assert list(got.callers) == list(expected.callers)  # same LRU order
    assert got.callers.evicted == expected.callers.evicted
    for name, want in expected.callers.items():
        have = got.callers.get(name)
        assert have is not None
        assert have.rows == want.rows
        assert have.errors == want.errors  # exactly: findings must not move
        assert have.counts.dtype == want.counts.dtype
        assert np.array_equal(have.counts, want.counts)


# -- intake's hot path for contract topics ------------------------------------------

_Record = namedtuple("_Record", "offset timestamp key value headers")


def _nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def _hostile_values(now: float) -> list[object]:
    good = {"ts": now, "model_id": "m", "request_id": "r", "principal": "p",
            "features": [1.0, 2.0], "prediction": 1, "probabilities": [0.3, 0.7]}
    return [
        orjson.dumps(good),
        orjson.dumps({**good, "ts": int(now * 1000)}),  # milliseconds
        orjson.dumps({**good, "ts": "2026-01-01T00:00:00Z"}),  # RFC 3339: outside max_age
        orjson.dumps({**good, "ts": now + 10 * 86400}),  # too far ahead
        orjson.dumps({**good, "ts": now - 400 * 86400}),  # too old
        orjson.dumps({**good, "ts": -1.0}),
        orjson.dumps({**good, "confidence": 1.5}),
        orjson.dumps({k: v for k, v in good.items() if k != "principal"}),
        orjson.dumps({**good, "event_type": "audit"}),  # a kind other than the topic's
        b"not json",
        b"[1, 2]",
        b"",
        None,  # a tombstone
        bytearray(orjson.dumps(good)),  # not bytes: the format's own path
        orjson.dumps({**good, "features": ["x" * 10] * 3000}),  # larger than max_bytes
        orjson.dumps({**good, "attributes": {"a": _nested(20)}}),  # too deep
        orjson.dumps({**good, "ts": 7}).replace(b'"ts":7', b'"ts":1' + b"0" * 400),
    ]


def _decoded(intake: Intake, values: list[object]) -> tuple[list[bytes], list[object]]:
    dead: list[OutRecord] = []
    records = [_Record(i, None, b"k", v, [("h", b"1")]) for i, v in enumerate(values)]
    out = intake.decode(TopicPartition("ml.inference", 3), records, dead)  # type: ignore[arg-type]
    events = [msgspec.json.encode(e) + repr(tuple(s)).encode() for e, s in out]
    return events, dead


def _intake(max_future_skew_s: float | None, max_age_s: float | None) -> Intake:
    return Intake({"ml.inference": ("contract", {"event_type": "inference", "max_bytes": 4096})},
                  dlq_topic="dlq", metrics=Metrics(), max_bytes=1 << 20,
                  max_future_skew_s=max_future_skew_s, max_age_s=max_age_s)


@pytest.mark.parametrize(("skew", "age"), [(86400.0, 30 * 86400.0), (None, None), (0.0, 0.0)])
def test_contract_fast_path_gives_what_the_format_path_gives(
    skew: float | None, age: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    values = _hostile_values(now)
    fast = _intake(skew, age)
    assert fast.format(TopicPartition("ml.inference", 3)).fast_path() is not None  # type: ignore[attr-defined]
    got = _decoded(fast, values)
    monkeypatch.setattr(ContractFormat, "fast_path", lambda self: None)
    slow = _decoded(_intake(skew, age), values)
    assert got == slow
    events, dead = got
    assert len(events) + len(dead) >= len(values) - 1  # every message accounted for
    if skew is not None and skew > 0:
        assert len(events) >= 2 and len(dead) >= 10  # both paths were exercised
