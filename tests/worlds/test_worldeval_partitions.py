"""eval --worlds: events fed from several partitions keyed like the daemon's input;
calibration sample sizes per world and detector."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import pytest

from daemon.lab.worldeval import partition_of, run_world, run_worlds
from daemon.lab.worlds import World, draw, world_events
from daemon.settings import load
from detectors.findings import Finding
from detectors.pipeline import Pipeline


def test_partition_of_is_kafkas_default_partitioner() -> None:
    # Kafka's Java client test vectors: murmur2("21") = -973932308,
    # murmur2("foobar") = -790332482; partition = toPositive(hash) % n.
    assert partition_of("21", 1000) == ((-973932308) & 0x7FFFFFFF) % 1000
    assert partition_of("foobar", 7) == ((-790332482) & 0x7FFFFFFF) % 7
    assert partition_of("anything", 1) == 0


class _Recorder:
    """A pipeline that records what it is fed: (kind, partition, principal/actor, offset)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int, list[tuple[str, int]]]] = []

    def process_many(self, kind: str, partition: int, items: Any) -> list[Finding]:
        run = [(str(getattr(e, "principal", None) or getattr(e, "actor", "")), int(s.offset))
               for e, s in items]
        assert all(s.partition == partition for _, s in items)
        self.runs.append((kind, partition, run))
        return []


@pytest.fixture(scope="module")
def small() -> World:
    return world_events(draw(3, days=1, scale=0.05))


def test_events_are_fed_from_the_partition_of_their_key(small: World) -> None:
    rec = _Recorder()
    run_world(3, rec, days=1, scale=0.05, partitions=4)
    where: dict[str, set[int]] = defaultdict(set)
    offsets: dict[int, list[int]] = defaultdict(list)
    for _kind, partition, run in rec.runs:
        for who, offset in run:
            where[who].add(partition)
            offsets[partition].append(offset)
    assert all(len(p) == 1 for p in where.values())  # a key lives in one partition
    assert all(partition_of(who, 4) in p for who, p in where.items())
    assert len(offsets) >= 3  # the world's keys spread over the partitions
    assert all(o == sorted(o) for o in offsets.values())  # each partition in order
    assert sum(len(o) for o in offsets.values()) == len(small.events)  # nothing lost
    one = _Recorder()
    run_world(3, one, days=1, scale=0.05)
    assert {p for _, p, _ in one.runs} == {0}


def test_partition_instances_and_calibration_sizes_are_reported() -> None:
    pipeline = Pipeline(load(None).detector_specs())
    row, _card = run_world(3, pipeline, days=1, scale=0.1, partitions=3)
    assert len(pipeline.partitions()) == 3  # one set of partition-scoped detectors each
    assert row.partitions == 3
    peer = row.calibration["volume.peer_rate"]
    assert peer["peer_windows"] > 0 and peer["models"] >= 1 and peer["callers"] >= 2
    drift = row.calibration["drift.features"]
    assert drift["reference_events"] == 2000 and drift["callers_with_own_reference"] >= 1


def test_the_text_report_lists_calibration_sizes_per_world() -> None:
    out = io.StringIO()
    run_worlds(lambda: Pipeline(load(None).detector_specs()), 1, days=1, scale=0.05, out=out,
               partitions=2)
    text = out.getvalue()
    assert "calibration sample sizes per world (largest instance of 2 partitions)" in text
    block = text.split("calibration sample sizes")[1]
    assert "volume.peer_rate peer_windows" in block and "drift.features reference_events" in block
    with pytest.raises(ValueError):
        run_worlds(lambda: None, 1, partitions=0)
