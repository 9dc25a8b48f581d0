"""A replica that restores a checkpoint older than the group's commit never moves the commit
back (the soak flake of issue #15: 167 events "unprocessed" after the final restart).

The last owner committed past its last periodic checkpoint (it was killed, or
lost the partition in a rebalance, which parks state without saving it). The
new owner restores that checkpoint and replays from its offsets; if it stops
in the middle of the replay, the committed offset must still be the group's,
while its own checkpoint says where the replay stopped, so that the next
start finishes the replay.
"""

from __future__ import annotations

import shutil

import orjson
import pytest

from daemon.state import LocalStateStore
from tests.integration.kafka_helpers import (
    DaemonThread,
    committed,
    make_settings,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0


def _events(start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"caller-{i % 5}".encode(), orjson.dumps({
        "ts": T0 + i, "model_id": "m", "request_id": str(i), "principal": f"caller-{i % 5}",
        "features": [1.0, float(i % 3)], "prediction": 0})) for i in range(start, start + n)]


def test_a_replay_from_an_older_checkpoint_never_moves_the_commit_back(broker, tmp_path):
    state = tmp_path / "state"
    settings = make_settings(broker, state={"dir": str(state), "checkpoint_every_s": 3600})
    group, topic = settings.kafka.group_id, settings.topics.inference

    def at(n: int) -> bool:
        return committed(broker, group).get((topic, 0), 0) >= n

    def checkpoint_offset() -> int:
        found = LocalStateStore(state, group).load(0)
        assert found is not None
        return found.offsets[topic]

    produce(broker, topic, _events(0, 100))
    with DaemonThread(settings):
        assert wait_for(lambda: at(100), 60)
    assert checkpoint_offset() == 100
    shutil.copytree(state, tmp_path / "old")  # the last checkpoint the next owner finds
    produce(broker, topic, _events(100, 2000))
    with DaemonThread(settings):
        assert wait_for(lambda: at(2100), 120)
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "old", state)

    slow = settings.model_copy(deep=True)
    slow.kafka.max_poll_records = 2  # a replay of 1,000 batches: the stop lands inside it
    replaying = DaemonThread(slow)
    with replaying:
        assert wait_for(lambda: replaying.daemon.processed > 0, 60, every_s=0.01)
    stopped_at = checkpoint_offset()
    assert 100 < stopped_at < 2100, "the stop must land in the middle of the replay"
    assert committed(broker, group)[(topic, 0)] == 2100
    # The next start resumes the replay where that checkpoint stopped, and finishes it.
    with DaemonThread(settings) as last:
        assert wait_for(lambda: last.daemon.processed >= 2100 - stopped_at, 60)
    assert checkpoint_offset() == 2100 and committed(broker, group)[(topic, 0)] == 2100
