"""Detector state is data with stable names, not the code layout (issue #13 item 4).

A snapshot names each object by its registered state type and holds only the
declared, versioned fields: renaming or moving a class keeps checkpoints
readable, a default changed by a release takes effect, and an entry that
cannot be read costs only its own detector its state.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections.abc import Iterator

import pytest

import detectors.abuse.volume as volume_module
import detectors.state as state_module
from detectors.abuse.volume import PeerRateDetector, PrincipalRateDetector
from detectors.base import Detector
from detectors.events import InferenceEvent
from detectors.findings import Source, encode_finding
from detectors.pipeline import DetectorSpec, Pipeline, StatePartition
from detectors.registry import build
from detectors.state_codec import StateUnreadable, decode, encode, state_type

T0 = 1_767_225_600.0


def _event(ts: float, who: str, i: int) -> InferenceEvent:
    return InferenceEvent(ts=ts, model_id="fraud", request_id=f"{who}-{i}", principal=who,
                          features=[0.1 * (i % 7), 1.0], prediction=i % 2)


def _history(minutes: int = 40) -> list[InferenceEvent]:
    return [_event(T0 + m * 60 + k, who, m * 10 + k)
            for m in range(minutes) for who in ("alice", "mallory") for k in range(6)]


def _flood(start: float) -> list[InferenceEvent]:
    return [_event(start + i * 0.1, "mallory", 100_000 + i) for i in range(300)]


def _run(detector: Detector, events: list[InferenceEvent], first_offset: int = 0) -> list[bytes]:
    out: list[bytes] = []
    for i, event in enumerate(events):
        out += [encode_finding(f) for f in
                detector.process(event, Source("ml.inference", 0, first_offset + i)) or ()]
    return out


@contextlib.contextmanager
def _moved(module: types.ModuleType, old: str, new_module: str, new: str) -> Iterator[type]:
    """What a refactor does: the class leaves ``module.old`` and lives at ``new_module.new``."""
    cls: type = getattr(module, old)
    names = (cls.__module__, cls.__qualname__, cls.__name__)
    target = types.ModuleType(new_module)
    setattr(target, new, cls)
    sys.modules[new_module] = target
    delattr(module, old)
    cls.__module__, cls.__qualname__, cls.__name__ = new_module, new, new
    try:
        yield cls
    finally:
        cls.__module__, cls.__qualname__, cls.__name__ = names
        setattr(module, old, cls)
        del sys.modules[new_module]


def test_a_state_class_renamed_and_moved_after_the_snapshot_restores_and_continues():
    history, flood = _history(), _flood(T0 + 40 * 60 + 5)
    before = build("volume.principal_rate", {"warmup_buckets": 3, "min_count": 30})
    assert _run(before, history) == []
    saved = before.snapshot()

    # the per-principal class and the table class are renamed and moved to other modules
    with _moved(volume_module, "_Rate", "detectors.abuse.rates", "PrincipalRate"), \
            _moved(state_module, "EntityTable", "detectors.tables", "LruTable"):
        after = build("volume.principal_rate", {"warmup_buckets": 3, "min_count": 30})
        after.restore(saved)  # the old code: AttributeError (pickle looks up volume._Rate)
        assert type(after.table).__qualname__ == "LruTable" and len(after.table) == 2
        # (the flood is mallory's, whose state exists: the module itself still says _Rate)
        continued = _run(after, flood, len(history))
    assert continued, "the restored baseline catches the flood"
    assert continued == _run(before, flood, len(history)), "same findings as never stopping"


def test_a_snapshot_taken_under_the_new_name_restores_under_the_old_one():
    learnt = build("volume.principal_rate")
    _run(learnt, _history(10))
    with _moved(volume_module, "_Rate", "detectors.abuse.rates", "PrincipalRate"):
        saved = learnt.snapshot()  # written by the release with the new name
    restored = build("volume.principal_rate")  # read by one with the old name (a rollback)
    restored.restore(saved)
    assert restored.snapshot() == learnt.snapshot()


def test_a_changed_default_is_not_taken_from_the_checkpoint(monkeypatch):
    old = build("volume.principal_rate")
    _run(old, _history(5))
    assert old.z_threshold == 6.0
    saved = old.snapshot()
    # a release changes the default of z_threshold (no config names it)
    defaults = list(PrincipalRateDetector.__init__.__defaults__ or ())
    defaults[1:3] = [defaults[1], 9.0]  # (bucket_seconds, alpha, z_threshold, ...)
    monkeypatch.setattr(PrincipalRateDetector.__init__, "__defaults__", tuple(defaults))
    new = build("volume.principal_rate")
    assert new.z_threshold == 9.0
    new.restore(saved)
    assert new.z_threshold == 9.0, "the old default came back from the checkpoint"
    assert len(new.table) == 2, "the learnt state did come back"


def test_a_snapshot_holds_only_the_declared_fields():
    detector = build("volume.principal_rate", {"z_threshold": 7.5})
    _run(detector, _history(3))
    saved = decode(detector.snapshot())
    assert saved["version"] == PrincipalRateDetector.state_version
    assert set(saved["state"]) == set(PrincipalRateDetector.state_fields) == {"table"}


def _pipeline() -> Pipeline:
    return Pipeline([DetectorSpec("volume.principal_rate", {"warmup_buckets": 3}),
                     DetectorSpec("volume.peer_rate")])


def _learnt_pipeline_state() -> dict[str, bytes]:
    pipeline = _pipeline()
    for i, event in enumerate(_history(10)):
        pipeline.process(event, Source("ml.inference", 0, i))
    return pipeline.snapshot(0)


def _entities(pipeline: Pipeline, name: str) -> float:
    [detector] = [d for p, d in pipeline.detectors()
                  if p == StatePartition.input(0) and d.name == name]
    return detector.stats().get("entities", 0.0)


def test_a_version_bump_relearns_that_detector_only(monkeypatch):
    states = _learnt_pipeline_state()
    monkeypatch.setattr(PeerRateDetector, "state_version", PeerRateDetector.state_version + 1)
    pipeline = _pipeline()
    failed = pipeline.restore(0, states)
    assert failed == [("volume.peer_rate", "version")]
    assert _entities(pipeline, "volume.principal_rate") == 2, "the other detector restored"
    assert _entities(pipeline, "volume.peer_rate") == 0, "this one starts afresh"
    # and it keeps working: events reach the fresh instance
    pipeline.process(_event(T0 + 9000, "carol", 1), Source("ml.inference", 0, 10_000))
    assert _entities(pipeline, "volume.peer_rate") == 1


def test_a_corrupt_or_unknown_entry_relearns_that_detector_only(monkeypatch):
    states = _learnt_pipeline_state()
    broken = dict(states, **{"volume.peer_rate": b"\x80\x05not a pickle"})
    pipeline = _pipeline()
    assert pipeline.restore(0, broken) == [("volume.peer_rate", "corrupt")]
    assert _entities(pipeline, "volume.principal_rate") == 2

    # a state type this release no longer has (its registration removed)
    from detectors import state_codec

    monkeypatch.delitem(state_codec._BY_NAME, "abuse.peer_rate_principal")
    pipeline = _pipeline()
    assert pipeline.restore(0, states) == [("volume.peer_rate", "unknown_type")]
    assert _entities(pipeline, "volume.principal_rate") == 2


def test_a_state_naming_anything_but_allowed_types_is_refused_unexecuted():
    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    with pytest.raises(StateUnreadable) as caught:
        decode(pickle.dumps({"state": Boom()}))
    assert caught.value.reason == "unknown_type"
    with pytest.raises(StateUnreadable) as caught:
        decode(pickle.dumps(types.SimpleNamespace(a=1)))
    assert caught.value.reason == "unknown_type"


def test_an_unregistered_class_of_ours_cannot_enter_a_state():
    class Unnamed:  # defined in tests.*: give it a module of ours
        pass

    Unnamed.__module__ = "detectors.somewhere"
    with pytest.raises(TypeError, match="not a registered state type"):
        encode({"x": Unnamed()})


def test_registered_names_are_unique():
    @state_type("test.unique_name")
    class First:
        pass

    with pytest.raises(ValueError, match="taken"):
        @state_type("test.unique_name")
        class Second:
            pass
