"""Seeded worlds: reproducible, varied across seeds, on the wire contract, honestly scored."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import main
from daemon.lab.simulate import LABEL, encode
from daemon.lab.victims import SHAPES
from daemon.lab.worldeval import HELD_OUT_BASE, run_world, seeds
from daemon.lab.worlds import World, draw, world_events
from detectors.events import decode_any
from detectors.findings import Entity, Finding, Source
from detectors.pipeline import Pipeline


def _small(seed: int) -> World:
    return world_events(draw(seed, days=1, scale=0.05))


@pytest.fixture(scope="module")
def tiny() -> World:
    return _small(2)


def test_a_world_is_reproducible_from_its_seed(tiny: World) -> None:
    again = _small(2)
    assert again.spec == tiny.spec
    assert again.scenarios == tiny.scenarios
    assert [encode(e) for e in again.events] == [encode(e) for e in tiny.events]
    other = _small(6)  # same shape, other seed
    assert other.spec.victim == tiny.spec.victim
    assert [encode(e) for e in other.events[:500]] != [encode(e) for e in tiny.events[:500]]


def _distinct(values: Iterable[Any]) -> int:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values})


def test_different_seeds_differ_in_the_named_dimensions() -> None:
    specs = [draw(s) for s in range(1, 13)]
    assert {s.victim for s in specs} == set(SHAPES)
    assert {s.stealth for s in specs} == {True, False}
    assert _distinct(s.days for s in specs) >= 3  # history length, drawn when not given
    assert min(s.days for s in specs) == 1
    assert _distinct(len(s.datasets) for s in specs) >= 3
    assert _distinct(s.versions for s in specs) >= 3
    assert _distinct(sorted({p.country for p in s.people}) for s in specs) >= 6  # time zones
    assert _distinct(sum(c.per_day for c in s.callers) // 1000 for s in specs) >= 3  # volume
    assert _distinct(sorted(c.habit for c in s.callers) for s in specs) >= 10  # caller mixes
    habits = {c.habit for s in specs for c in s.callers}
    assert habits == {"interactive", "batch", "retrying", "repeating", "noisy", "heavy"}
    pipelines = [p for s in specs for p in s.pipelines]
    assert any(p.orchestrator == p.trainer for p in pipelines)  # one identity runs it all
    assert any(p.orchestrator != p.trainer != p.etl for p in pipelines)  # several identities
    assert {p.run_key for p in pipelines} == {"run_id", "pipeline_run_id"}
    assert _distinct(s.attacks for s in specs) >= 6
    assert draw(3, days=2).days == 2


def test_every_event_is_on_the_wire_contract_and_labels_travel_out_of_band(tiny: World) -> None:
    labelled = 0
    for e in tiny.events:
        event = decode_any(encode(e))  # raises BadEvent on anything off-contract
        label = (event.attributes or {}).get(LABEL)
        assert label == e.scenario
        labelled += label is not None
    assert labelled == sum(e.scenario is not None for e in tiny.events) > 0
    assert {e.scenario for e in tiny.events} - {None} <= set(tiny.scenarios)


def test_pipeline_runs_span_identities_through_one_run_id() -> None:
    spec = next(s for s in (draw(k, days=1, scale=0.05) for k in range(1, 30))
                if any(p.orchestrator != p.trainer for p in s.pipelines))
    world = world_events(spec)
    p = next(p for p in spec.pipelines if p.orchestrator != p.trainer)
    runs = {e.body["attributes"][p.run_key] for e in world.events
            if e.key == p.orchestrator and e.body.get("action") == "pipeline.run"}
    changes = [e for e in world.events if e.key == p.trainer
               and e.body.get("action") in ("model.update", "model.register")
               and e.body["resource"].startswith(f"model:{p.model}:")]
    assert changes and all(e.body["attributes"][p.run_key] in runs for e in changes)


def test_the_tabular_victim_sends_named_features_of_very_different_scales() -> None:
    world = _small(1)
    assert world.spec.victim == "tabular2"
    feats = [e.body["features"] for e in world.events
             if e.kind == "inference" and e.scenario is None]
    assert feats and all(isinstance(f, dict) and len(f) == 30 for f in feats)
    spread = {k: max(abs(f[k]) for f in feats) for k in feats[0]}
    assert max(spread.values()) > 1e5 and min(spread.values()) <= 1.0


class _Planted:
    """A stand-in pipeline that emits chosen findings at chosen events (for the scorer)."""

    def __init__(self, plan: list[tuple[int, str, Entity]]) -> None:
        self.plan = {i: (kind, entity) for i, kind, entity in plan}

    def process_many(self, _kind: str, _partition: int,
                     items: Iterable[tuple[Any, Source]]) -> list[Finding]:
        out = []
        for event, source in items:
            if source.offset in self.plan:
                kind, entity = self.plan[source.offset]
                out.append(Finding.build(
                    detector="planted.test", kind=kind, severity="high",
                    entity=entity, model_id=None, summary="planted",
                    evidence={}, atlas=[], event_ts=float(event.ts), sources=[source]))
        return out


def test_the_scorer_counts_a_planted_detection_and_a_planted_false_finding(tiny: World) -> None:
    name = "brute_force"
    s = tiny.scenarios[name]
    first = next(i for i, e in enumerate(tiny.events) if e.scenario == name)
    before = first - 1  # a benign event before the attack began
    attacker = Entity("principal", s.entity_id)
    plan = [(first + 3, "suspicious_access", attacker),
            (first + 5, "suspicious_access", Entity("principal", tiny.spec.callers[0].name))]
    row, _card = run_world(2, _Planted(plan), days=1, scale=0.05)
    assert row.detected == [name]
    assert set(row.missed) == set(tiny.scenarios) - {name}
    assert row.false_findings == 1
    assert row.false_by_role == {f"planted.test|principal:caller:{tiny.spec.callers[0].habit}": 1}
    assert row.benign_events == len(tiny.events) - sum(e.scenario is not None
                                                       for e in tiny.events)
    # The same scorer says no when it should: wrong kind, or before the attack began.
    plan = [(first + 3, "exfiltration", attacker), (before, "suspicious_access", attacker)]
    row, _ = run_world(2, _Planted(plan), days=1, scale=0.05)
    assert row.detected == []
    assert row.false_findings == 1  # the early one; the wrong kind is "other", not false
    assert row.detectors["planted.test"] == {"true": 0, "false": 1, "other": 1, "updates": 0}


def test_the_default_detectors_over_a_tiny_world_give_a_consistent_row(tiny: World) -> None:
    from daemon.settings import load

    row, _card = run_world(2, Pipeline(load(None).detector_specs()), days=1, scale=0.05)
    assert row.events == len(tiny.events)
    assert sorted(row.attacks) == sorted(tiny.scenarios)
    assert sorted(row.detected + row.missed) == sorted(row.attacks)
    assert row.false_findings == sum(c["false"] for c in row.detectors.values())
    assert "brute_force" in row.detected  # 30 failures from one IP, then a success


def test_held_out_seeds_never_overlap_tuning_seeds() -> None:
    suite = seeds(20, 4)
    tuning = [s for s, g in suite if g == "tuning"]
    held = [s for s, g in suite if g == "held-out"]
    assert tuning == list(range(1, 17)) and len(held) == 4
    assert min(held) > HELD_OUT_BASE > max(seeds(HELD_OUT_BASE - 1, 0))[0]
    assert {draw(s).victim for s in held} == set(SHAPES)
    with pytest.raises(ValueError):
        seeds(2, 3)


def test_cli_eval_worlds_json_and_simulate_world(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--worlds", "2", "--held-out", "1", "--days", "1", "--scale", "0.05",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(w["seed"], w["group"]) for w in doc["worlds"]] == [(1, "tuning"),
                                                                 (HELD_OUT_BASE + 1, "held-out")]
    for group in ("tuning", "held-out"):
        t = doc["totals"][group]
        assert t["worlds"] == 1 and t["detected"] <= t["attacks"]
        assert t["false_findings"] == sum(int(d["false"]) for d in t["detectors"].values())
    out = tmp_path / "w.jsonl"
    assert main(["simulate", "--world", "2", "--days", "1", "--scale", "0.05",
                 "--out", str(out)]) == 0
    lines = out.read_bytes().splitlines()
    assert lines == [encode(e) for e in _small(2).events]
    assert main(["eval"]) == 2
    assert main(["eval", "--worlds", "2", "--held-out", "3"]) == 2


def test_each_victim_shape_has_its_wire_form() -> None:
    by_shape = {}
    for seed in range(1, 5):
        w = _small(seed)
        benign = [e.body for e in w.events if e.kind == "inference" and e.scenario is None]
        by_shape[w.spec.victim] = benign
    image = by_shape["image10"]
    assert all(len(b["features"]) == 64 and 0 <= min(b["features"]) <= max(b["features"]) <= 16
               and len(b["probabilities"]) == 10 for b in image)
    emb = by_shape["embedding"]
    assert all(len(b["features"]) == 48 and len(b["probabilities"]) == 6 for b in emb)
    assert all(abs(sum(v * v for v in b["features"]) - 1.0) < 1e-3 for b in emb)
    reg = by_shape["regression"]
    assert all(isinstance(b["features"], dict) and len(b["features"]) == 12
               and isinstance(b["prediction"], float) and "probabilities" not in b for b in reg)
    tab = by_shape["tabular2"]
    assert {b["prediction"] for b in tab} == {0, 1}


def _gaps(world: World, scenario: str) -> float:
    ts = [e.ts for e in world.events if e.scenario == scenario]
    return (ts[-1] - ts[0]) / (len(ts) - 1)


def test_stealth_attackers_pace_like_the_heaviest_benign_caller() -> None:
    normal, stealth = draw(2, days=1), draw(6, days=1)  # same shape, pacing differs
    assert not normal.stealth and stealth.stealth
    n, s = world_events(normal), world_events(stealth)
    assert "model_extraction" in n.scenarios and "model_extraction" in s.scenarios
    assert 0.8 < _gaps(n, "model_extraction") < 1.25  # about one a second
    heavy = max(stealth.callers, key=lambda c: c.per_day)
    daytime_gap = 14 * 3600 / (0.8 * heavy.per_day)
    assert 0.8 * daytime_gap < _gaps(s, "model_extraction") < 1.25 * daytime_gap
    assert _gaps(s, "model_extraction") > 2 * _gaps(n, "model_extraction")


def test_simulate_world_refuses_art(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--world", "1", "--art", "--out", "/dev/null"]) == 2
    assert "--art" in capsys.readouterr().err
