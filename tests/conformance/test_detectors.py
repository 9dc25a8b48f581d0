"""River-style conformance: every registered detector, checked automatically.

Adding a detector to a family's DETECTORS tuple enrols it here; nothing else to do.
"""

from __future__ import annotations

import copy
import pickle
import socket

import msgspec
import pytest

from detectors.base import Detector
from detectors.events import event_type_of
from detectors.findings import KINDS, SEVERITIES, decode_finding, encode_finding
from detectors.registry import REGISTRY, build, params_model
from detectors.state_codec import decode
from detectors.testing import feed, mixed_stream, sourced

NAMES = sorted(REGISTRY)
STREAM = mixed_stream(n=4000, seed=7)


def _encoded(findings):
    return [encode_finding(f) for f in findings]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("detectors must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registry_is_not_empty():
    assert NAMES


@pytest.mark.parametrize("name", NAMES)
def test_declares_itself(name):
    cls = REGISTRY[name]
    assert issubclass(cls, Detector)
    assert cls.__doc__ and cls.__doc__.strip(), "a detector explains itself in a docstring"
    assert cls.name == name and "." in name
    assert cls.event_types and cls.event_types <= {"inference", "audit", "access"}
    assert cls.scope in ("partition", "model")
    params_model(cls)  # its __init__ signature is typed well enough to validate config


@pytest.mark.parametrize("name", NAMES)
def test_does_not_mutate_input_and_returns_valid_findings(name):
    detector = build(name)
    for event, source in sourced(STREAM):
        if event_type_of(event) not in detector.event_types:
            continue
        before = msgspec.json.encode(event)
        out = detector.process(event, source)
        assert msgspec.json.encode(event) == before, "input event mutated"
        assert out is None or isinstance(out, list)
        for finding in out or ():
            assert finding.detector == name
            assert finding.kind in KINDS
            assert finding.severity in SEVERITIES
            assert finding.entity.type in ("model", "principal", "resource", "ip")
            assert finding.summary and finding.sources
            assert source in [(s.topic, s.partition, s.offset) for s in finding.sources]
            assert decode_finding(encode_finding(finding)) == finding


@pytest.mark.parametrize("name", NAMES)
def test_runs_are_repeatable(name):
    first = _encoded(feed(build(name), copy.deepcopy(STREAM)))
    second = _encoded(feed(build(name), copy.deepcopy(STREAM)))
    assert first == second


@pytest.mark.parametrize("name", NAMES)
def test_snapshot_restore_continues_identically(name):
    half = len(STREAM) // 2
    original = build(name)
    feed(original, STREAM[:half])
    restored = build(name)
    restored.restore(original.snapshot())
    # Same offsets for the second half in both: feed() restarts positions, so
    # compare the two continuations with each other.
    assert _encoded(feed(original, STREAM[half:])) == _encoded(feed(restored, STREAM[half:]))


#: Attributes outside ``state_fields`` that processing may change: memos of a
#: pure function of config, rebuilt on demand after a restore.
_MEMOS = {"access.exfiltration": {"_is_read"}}


@pytest.mark.parametrize("name", NAMES)
def test_declares_its_learnt_state_and_keeps_config_out_of_it(name):
    """What processing changes is declared state; the rest comes from config, so a
    changed default takes effect after a restart instead of coming back from it."""
    cls = REGISTRY[name]
    assert cls.state_fields and isinstance(cls.state_version, int)
    fresh, fed = build(name), build(name)
    assert set(cls.state_fields) <= set(fed.__dict__), "declares attributes it has"
    feed(fed, STREAM)
    for attr, value in fed.__dict__.items():
        if attr in cls.state_fields or attr in _MEMOS.get(name, ()) or attr == "_cap_pools":
            continue
        assert pickle.dumps(value) == pickle.dumps(fresh.__dict__[attr]), \
            f"{attr} changes with events but is not in state_fields"
    saved = decode(fed.snapshot())
    assert set(saved["state"]) <= set(cls.state_fields)


@pytest.mark.parametrize("name", NAMES)
def test_tolerates_missing_optional_fields(name):
    feed(build(name), mixed_stream(n=1500, seed=3, minimal=True))


@pytest.mark.parametrize("name", NAMES)
def test_stats_are_numbers(name):
    detector = build(name)
    feed(detector, STREAM[:500])
    for key, value in detector.stats().items():
        assert isinstance(key, str) and isinstance(value, int | float)


@pytest.mark.parametrize("name", NAMES)
def test_process_batch_equals_process_one_by_one(name):
    """Batches of any size give the same findings, in the same order, as single events."""
    import random

    detector = build(name)
    items = [(e, s) for e, s in sourced(STREAM) if event_type_of(e) in detector.event_types]
    one_by_one = []
    for event, source in items:
        one_by_one.extend(detector.process(event, source) or ())
    batched_detector = build(name)
    batched = []
    rng = random.Random(5)
    i = 0
    while i < len(items):
        size = rng.choice((1, 7, 64, 500))
        batched.extend(batched_detector.process_batch(items[i:i + size]))
        i += size
    assert _encoded(batched) == _encoded(one_by_one)
    assert batched_detector.snapshot() == detector.snapshot() or \
        _encoded(feed(batched_detector, STREAM[:300])) == _encoded(feed(detector, STREAM[:300]))


def test_a_run_shared_by_every_detector_equals_one_by_one():
    """As the pipeline calls them: every detector of a kind gets the same Run object
    (columns computed by one serve the next), in batches of any size."""
    import random

    from detectors.columns import Run

    one_by_one = {name: [] for name in NAMES}
    singles = {name: build(name) for name in NAMES}
    for event, source in sourced(STREAM):
        for name, detector in singles.items():
            if event_type_of(event) in detector.event_types:
                one_by_one[name].extend(detector.process(event, source) or ())
    shared = {name: build(name) for name in NAMES}
    batched = {name: [] for name in NAMES}
    items = list(sourced(STREAM))
    rng = random.Random(6)
    i = 0
    while i < len(items):
        size = rng.choice((1, 7, 64, 500))
        chunk = items[i:i + size]
        for kind in ("inference", "audit", "access"):
            run = Run(it for it in chunk if event_type_of(it[0]) == kind)
            for name, detector in shared.items():
                if kind in detector.event_types and run:
                    batched[name].extend(detector.process_batch(run))
        i += size
    for name in NAMES:
        assert _encoded(batched[name]) == _encoded(one_by_one[name]), name
