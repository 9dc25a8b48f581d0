"""librdkafka errors keep kafka-python's meaning in the confluent transport (issue #16).

``send_all`` drops or cuts down a record refused for good and retries the
rest; the runtime drops a commit the group no longer accepts. Those decisions
are taken on kafka-python's classes, so the mapping is what keeps them.
"""

from __future__ import annotations

import pytest

ck = pytest.importorskip("confluent_kafka", reason="confluent-kafka is not installed")

from kafka import errors as kerr  # noqa: E402

from daemon.kafka_confluent import _error  # noqa: E402
from daemon.kafka_io import _RECORD_ERRORS  # noqa: E402

E = ck.KafkaError


@pytest.mark.parametrize("code", [E.MSG_SIZE_TOO_LARGE, E.RECORD_LIST_TOO_LARGE,
                                  E.INVALID_RECORD, E.INVALID_TIMESTAMP])
def test_a_record_refused_for_good_is_not_retried(code: int) -> None:
    mapped = _error(E(code), "delivery")
    assert isinstance(mapped, _RECORD_ERRORS)
    mapped = _error(ck.KafkaException(E(code)), "send")  # raised by produce() itself
    assert isinstance(mapped, _RECORD_ERRORS)


@pytest.mark.parametrize("code", [E._TRANSPORT, E._MSG_TIMED_OUT, E.NOT_LEADER_FOR_PARTITION,
                                  E.TOPIC_AUTHORIZATION_FAILED, E._ALL_BROKERS_DOWN])
def test_other_errors_are_retried(code: int) -> None:
    mapped = _error(E(code), "delivery")
    assert isinstance(mapped, kerr.KafkaError) and not isinstance(mapped, _RECORD_ERRORS)
    assert not isinstance(mapped, kerr.CommitFailedError)


@pytest.mark.parametrize("code", [E.REBALANCE_IN_PROGRESS, E.ILLEGAL_GENERATION,
                                  E.UNKNOWN_MEMBER_ID])
def test_a_commit_the_group_moved_past_is_a_commit_failed_error(code: int) -> None:
    assert isinstance(_error(ck.KafkaException(E(code)), "commit"), kerr.CommitFailedError)
