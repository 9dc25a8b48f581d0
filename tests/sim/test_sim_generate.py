"""``mlwatchd simulate``: repeatable per seed, labels where eval reads them."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest

from daemon.lab.simulate import SCENARIOS, Progress, encode, generate, run_simulate, simulate


def _write(tmp_path: Path, name: str, seed: int) -> bytes:
    out = tmp_path / name
    assert run_simulate(str(out), seed=seed, days=3, scale=0.1) == 0
    return out.read_bytes()


def test_same_seed_gives_byte_identical_jsonl(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.jsonl", 11)
    assert first == _write(tmp_path, "b.jsonl", 11)
    assert first != _write(tmp_path, "c.jsonl", 12)


def test_every_scenario_is_labelled_in_attributes(tmp_path: Path) -> None:
    rows = [orjson.loads(line) for line in _write(tmp_path, "a.jsonl", 3).splitlines()]
    labels = {r["attributes"]["sim_scenario"] for r in rows if "attributes" in r}
    assert labels == {s.name for s in SCENARIOS}
    assert all("event_type" in r for r in rows)
    assert [r["ts"] for r in rows] == sorted(r["ts"] for r in rows)


def test_generate_keeps_the_demo_contract() -> None:
    events = generate(seed=7, days=2, people=3, callers=2, inference_events=500)
    assert {e.scenario for e in events if e.scenario} >= {"exfiltration", "brute_force"}
    assert all("attributes" not in e.body for e in events)  # the label is added on encode only
    labelled = next(e for e in events if e.scenario)
    assert orjson.loads(encode(labelled))["attributes"] == {"sim_scenario": labelled.scenario}
    benign = next(e for e in events if not e.scenario)
    assert orjson.loads(encode(benign)) == benign.body


def test_scale_changes_volume() -> None:
    small, _ = simulate(seed=1, days=2, scale=0.1)
    large, _ = simulate(seed=1, days=2, scale=0.3)
    assert len(large) > len(small)


def test_progress_bar_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    quiet, tty = io.StringIO(), Tty()
    for stream in (quiet, tty):
        bar = Progress(200, "writing", stream)
        for i in range(0, 201, 50):
            bar.update(i)
        bar.close()
    assert quiet.getvalue() == ""
    assert tty.getvalue().endswith("100% 200/200\n")
    assert tty.getvalue().count("\r") == 5


def test_art_scenarios_repeat_per_seed() -> None:
    pytest.importorskip("art")
    pytest.importorskip("sklearn")
    runs = [simulate(seed=3, days=2, scale=0.1, art=True) for _ in range(2)]
    assert [encode(e) for e in runs[0][0]] == [encode(e) for e in runs[1][0]]
    labels = {e.scenario for e in runs[0][0] if e.scenario}
    assert {"art_hopskipjump", "art_boundary", "art_knockoff"} <= labels
    assert runs[0][1] == []


def test_without_art_the_rest_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.lab import attacks

    monkeypatch.setattr(attacks, "missing", lambda: ["adversarial-robustness-toolbox"])
    events, notes = simulate(seed=3, days=2, scale=0.1, art=True)
    assert len(notes) == 1
    assert notes[0].startswith("skipped art_hopskipjump, art_boundary, art_knockoff: "
                               "adversarial-robustness-toolbox not installed")
    assert {e.scenario for e in events if e.scenario} == {s.name for s in SCENARIOS}
