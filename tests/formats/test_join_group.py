"""Seldon Core 2's request and response topics joined through ``join_group``.

Seldon writes a model's requests to ``seldon.<ns>.model.<m>.inputs`` and its
responses to ``...outputs``, keyed by request id. Topics of one join group
share one format instance per partition number, so the pair becomes one
inference event; without the group each topic's join waits forever.
"""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

import pytest
from kafka import TopicPartition

from daemon.intake import Intake
from daemon.metrics import Metrics
from daemon.settings import ConfigError, load

Message = namedtuple("Message", "offset key value headers timestamp")

INPUTS, OUTPUTS = "seldon.fraud.model.fraud-mlp.inputs", "seldon.fraud.model.fraud-mlp.outputs"
REQUEST = {"inputs": [{"name": "predict", "shape": [1, 4], "datatype": "FP64",
                       "data": [0.2, 1.3, 5.1, 0.0]}],
           "parameters": {"principal": "team-risk-batch"}}
RESPONSE = {"model_name": "fraud-mlp_1",
            "outputs": [{"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}


def _intake(groups: dict[str, str] | None) -> Intake:
    inputs: dict[str, tuple[str, dict[str, Any]]] = {INPUTS: ("oip", {}), OUTPUTS: ("oip", {})}
    return Intake(inputs, dlq_topic="dlq", metrics=Metrics(), max_bytes=1 << 20,
                  max_future_skew_s=None, max_age_s=None, join_groups=groups)


def _message(offset: int, body: dict[str, Any], ts_ms: int) -> Message:
    return Message(offset, b"cr3vs7", json.dumps(body).encode(),
                   [("x-request-id", b"cr3vs7fsb1ms73c3ob8g")], ts_ms)


def _pair(intake: Intake, partition: int = 0) -> list[Any]:
    dead: list[Any] = []
    first = intake.decode(TopicPartition(INPUTS, partition), [_message(5, REQUEST, 1_000)], dead)
    second = intake.decode(TopicPartition(OUTPUTS, partition), [_message(9, RESPONSE, 1_080)],
                           dead)
    assert dead == []
    return first + second


def test_a_request_and_its_response_on_two_topics_of_one_group_make_one_event() -> None:
    [(event, source)] = _pair(_intake({INPUTS: "fraud", OUTPUTS: "fraud"}))
    assert event.model_id == "fraud-mlp_1" and event.principal == "team-risk-batch"
    assert event.features == [0.2, 1.3, 5.1, 0.0] and event.prediction == 1
    assert (source.topic, source.offset) == (OUTPUTS, 9)


def test_without_a_group_each_topic_waits_for_the_other_half() -> None:
    assert _pair(_intake(None)) == []


def test_only_the_same_partition_number_joins() -> None:
    intake = _intake({INPUTS: "fraud", OUTPUTS: "fraud"})
    dead: list[Any] = []
    intake.decode(TopicPartition(INPUTS, 0), [_message(5, REQUEST, 1_000)], dead)
    assert intake.decode(TopicPartition(OUTPUTS, 1), [_message(9, RESPONSE, 1_080)], dead) == []


def test_the_shared_join_is_checkpointed_once_and_continues_after_a_restore() -> None:
    groups = {INPUTS: "fraud", OUTPUTS: "fraud"}
    before = _intake(groups)
    dead: list[Any] = []
    before.decode(TopicPartition(INPUTS, 0), [_message(5, REQUEST, 1_000)], dead)
    before.format(TopicPartition(OUTPUTS, 0))
    saved = json.loads(json.dumps(before.snapshot(0)))
    assert len(saved) == 1, "one shared instance, saved under one topic"
    after = _intake(groups)
    after.restore(0, saved)
    [(event, _)] = after.decode(TopicPartition(OUTPUTS, 0), [_message(9, RESPONSE, 1_080)], dead)
    assert event.principal == "team-risk-batch"


@pytest.mark.parametrize(("formats", "problem"), [
    ({INPUTS: {"format": "oip", "join_group": "fraud"}}, "names one topic only"),
    ({INPUTS: {"format": "oip", "join_group": "g"},
      OUTPUTS: {"format": "kserve", "join_group": "g"}}, "need the same format"),
    ({INPUTS: {"format": "contract", "options": {"event_type": "inference"}, "join_group": "g"},
      OUTPUTS: {"format": "contract", "options": {"event_type": "inference"},
                "join_group": "g"}}, "only kserve, oip topics join"),
])
def test_a_join_group_that_cannot_work_fails_at_start(tmp_path: Any, formats: dict[str, Any],
                                                      problem: str) -> None:
    config = tmp_path / "mlwatchd.yaml"
    config.write_text(json.dumps({"input": {"formats": formats}}))
    with pytest.raises(ConfigError) as caught:
        load(config)
    assert any(problem in line for line in caught.value.problems), caught.value.problems
