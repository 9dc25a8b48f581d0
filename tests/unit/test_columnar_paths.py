"""The vectorised batch paths (issue #16) against the per-item code they replaced."""

from __future__ import annotations

import copy
import itertools
import math
import random
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
from daemon.runtime import _runs
from detectors.columns import Run
from detectors.events import AuditEvent, Event, InferenceEvent, event_type_of
from detectors.findings import Finding, Source, encode_finding
from detectors.registry import build
from detectors.state import EntityTable
from detectors.telemetry.feature_reference import (
    CallerReference,
    FeatureReference,
    bin_counts,
)
from detectors.telemetry.window import WindowedModelDetector
from detectors.testing import mixed_stream, sourced


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


# -- telemetry detectors: a model segment at a time ----------------------------------

TELEMETRY = ("drift.features", "drift.prediction", "confidence.drop", "integrity.outliers",
             "performance.cbpe")


def _per_event(detector: WindowedModelDetector, items: list[tuple[Event, Source]]) -> list[Finding]:
    """The per-event loop ``process_batch`` was before it took model segments."""
    out: list[Finding] = []
    for event, source in items:
        if type(event) is not InferenceEvent:
            continue
        st = detector._hot.get(event.model_id)
        if st is None or st.version != event.model_version:
            st = detector._state_of(event)
        if detector.needs_confidence and event.confidence is None:
            continue
        if not st.items:
            st.first_source = source
        st.items.append(event)
        if len(st.items) >= detector.step:
            out.extend(detector._close_block(st, event, source) or ())
    return out


def _telemetry_stream(seed: int) -> list[tuple[Event, Source]]:
    """Two models (one with two versions, interleaved in runs), events without
    confidence, audit events between, and a shift of inputs and outputs halfway."""
    rng = random.Random(seed)
    out: list[tuple[Event, Source]] = []
    model, version = "fraud", "1"
    for i in range(6000):
        if rng.random() < 0.05:  # runs of one model, not alternating events
            model = rng.choice(["fraud", "churn"])
            version = rng.choice(["1", "2"]) if model == "churn" else "1"
        if rng.random() < 0.03:
            out.append((AuditEvent(ts=float(i), actor="a", action="dataset.read", resource="r",
                                   outcome="success"), Source("t", 0, i)))
            continue
        shift = 1.5 if i > 4000 else 0.0
        feats = [rng.gauss(shift, 1), rng.gauss(0, 1), rng.gauss(0, 1)]
        p1 = 1 / (1 + math.exp(-(feats[0] - 2 * shift)))
        probabilities = [1 - p1, p1] if rng.random() < 0.8 else None
        label = int(rng.random() < p1) if rng.random() < 0.3 else None
        out.append((InferenceEvent(ts=float(i), model_id=model, model_version=version,
                                   request_id=str(i), principal=f"p{rng.randrange(30)}",
                                   features=feats, prediction=int(p1 > 0.5),
                                   probabilities=probabilities, label=label),
                    Source("t", 0, i)))
    return out


@pytest.mark.parametrize("name", TELEMETRY)
def test_telemetry_segments_equal_the_per_event_loop(name: str) -> None:
    params = {"reference_size": 400, "window": 200, "step": 50}
    if name == "performance.cbpe":
        params["label_window"] = 100
    items = _telemetry_stream(3)
    expected_detector = build(name, params)
    assert isinstance(expected_detector, WindowedModelDetector)
    expected = [encode_finding(f) for f in _per_event(expected_detector, items)]
    detector = build(name, params)
    got: list[bytes] = []
    rng = random.Random(4)
    at = 0
    while at < len(items):
        size = rng.choice((1, 3, 49, 50, 51, 700, 2000))
        run = Run(items[at:at + size])
        got.extend(encode_finding(f) for f in detector.process_batch(run))
        at += size
    assert got == expected
    assert detector.snapshot() == expected_detector.snapshot()
    if name in ("drift.features", "drift.prediction"):
        assert expected  # the shift is found: the comparison covers windows and findings


def test_runtime_runs_are_the_consecutive_events_of_one_kind() -> None:
    items = list(sourced(mixed_stream(500, seed=2)))
    got = [(kind, [s.offset for _, s in run]) for kind, run in _runs(items)]
    expected = [(kind, [s.offset for _, s in group])
                for kind, group in itertools.groupby(items, key=lambda it: event_type_of(it[0]))]
    assert got == expected and len(got) > 100
