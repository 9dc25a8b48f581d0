"""The scorecard's arithmetic on small hand-checked cases."""

from __future__ import annotations

import pytest

from daemon.lab.evaluate import EventInfo, Hit, format_scorecard, score
from daemon.lab.simulate import Scenario

SC = {
    "flood": Scenario("flood", "", "principal", "bad", ("denial_of_service",), 0.0),
    "drift": Scenario("drift", "", "model", "m", ("drift",), 0.0),
    "quiet": Scenario("quiet", "", "principal", "sneaky", ("exfiltration",), 0.0),
}


def _events() -> list[EventInfo]:
    # index: 0    1       2        3       4        5       6       7        8     9
    return [
        EventInfo(100.0),
        EventInfo(110.0, "flood", "m"),
        EventInfo(111.0, "flood", "m"),
        EventInfo(112.0),
        EventInfo(113.0, "flood", "m"),
        EventInfo(120.0, "quiet"),
        EventInfo(130.0, "drift", "m"),
        EventInfo(140.0, "drift", "m"),
        EventInfo(150.0, "drift", "m"),
        EventInfo(200.0),
    ]


def test_detected_missed_and_time_to_detect() -> None:
    hits = [
        Hit(0, "a.flag", "denial_of_service", "principal", "bad"),  # before the attack: false
        Hit(3, "v.rate", "denial_of_service", "principal", "bad"),  # 2 flood events, 2 s
        Hit(4, "v.rate", "denial_of_service", "principal", "bad"),  # again: not earlier
        Hit(5, "x.wrong", "suspicious_access", "principal", "sneaky"),  # other kind
        Hit(8, "d.feat", "drift", "model", "m"),  # 3 drift events, 20 s
        Hit(9, "u.hours", "suspicious_access", "principal", "alice"),  # benign: false
    ]
    card = score(_events(), hits, SC)
    by = {r.scenario.name: r for r in card.scenarios}
    assert [r.scenario.name for r in card.scenarios] == ["flood", "drift", "quiet"]
    assert (by["flood"].detected, by["flood"].events, by["flood"].events_to_detect) == (True, 3, 2)
    assert by["flood"].seconds_to_detect == pytest.approx(2.0)
    assert by["flood"].detectors == ["v.rate"]
    assert (by["drift"].detected, by["drift"].events_to_detect) == (True, 3)
    assert by["drift"].seconds_to_detect == pytest.approx(20.0)
    assert (by["quiet"].detected, by["quiet"].other) == (False, True)
    assert by["quiet"].events_to_detect is None
    assert card.detected == 2
    assert card.events == 10 and card.attack_events == 7
    assert card.false_findings == 2
    assert card.false_per_million == pytest.approx(2 * 1e6 / 10)
    c = card.detectors
    assert (c["v.rate"].total, c["v.rate"].true, c["v.rate"].false) == (2, 2, 0)
    assert (c["a.flag"].false, c["u.hours"].false, c["x.wrong"].other) == (1, 1, 1)
    text = format_scorecard(card)
    assert "detected 2 of 3" in text
    assert "2 ev / 2s" in text and "3 ev / 20s" in text
    assert "200,000.0 per million" in text


def test_model_findings_after_attack_queries_are_side_effects_not_false() -> None:
    events = [EventInfo(0.0, None, "n"), EventInfo(1.0, "flood", "n"), EventInfo(2.0, None, "n")]
    hits = [
        Hit(0, "d.feat", "drift", "model", "n"),  # before any attack query: false
        Hit(2, "d.feat", "drift", "model", "n"),  # after: side effect
    ]
    card = score(events, hits, SC)
    assert (card.false_findings, card.side_effects) == (1, 1)
    assert card.scenarios[0].detected is False and card.scenarios[0].other is False


def test_empty_and_unknown_labels() -> None:
    card = score([EventInfo(1.0, "nope")], [], SC)
    assert card.scenarios == [] and card.unknown_labels == ["nope"]
    assert card.false_per_million == 0.0
    assert score([], [], SC).false_per_million == 0.0
    assert "no findings" in format_scorecard(card)
