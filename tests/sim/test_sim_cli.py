"""End to end: ``mlwatchd simulate`` then ``mlwatchd eval`` as subprocesses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest


def _mlwatchd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_simulate_then_eval_scores_a_small_stream(tmp_path: Path) -> None:
    out = tmp_path / "s.jsonl"
    sim = _mlwatchd("simulate", "--out", str(out), "--seed", "5", "--days", "4",
                    "--scale", "0.2")
    assert sim.returncode == 0, sim.stderr
    n_lines = len(out.read_bytes().splitlines())
    assert f"{n_lines:,} events" in sim.stderr

    html = tmp_path / "r.html"
    ev = _mlwatchd("eval", str(out), "--html", str(html))
    assert ev.returncode == 0, ev.stderr
    text = ev.stdout
    head = re.search(r"Scorecard: ([\d,]+) events, ([\d,]+) attack events, (\d+) scenarios; "
                     r"detected (\d+) of (\d+)\.", text)
    assert head, text
    events, attack, scenarios, detected, total = (int(g.replace(",", "")) for g in head.groups())
    assert events == n_lines and scenarios == total == 10
    counts = re.findall(r"^  \w+\s+(?:detected|MISSED|other)\s+([\d,]+)\s", text, re.M)
    assert sum(int(c.replace(",", "")) for c in counts) == attack
    rows = dict(re.findall(r"^  (\w+)\s+(detected|MISSED|other)\s", text, re.M))
    assert len(rows) == 10
    assert sum(v == "detected" for v in rows.values()) == detected
    # A 2,500-query burst from a one-a-minute caller is found within its first few hundred.
    flood = re.search(r"^  query_flood\s+detected\s+2,500\s+([\d,]+) ev / (\S+)", text, re.M)
    assert flood, text
    assert int(flood.group(1).replace(",", "")) < 500
    for name in ("self_grant", "model_tampering", "brute_force"):
        assert rows[name] == "detected", text
    false = re.search(r"False findings on benign entities: (\d+) \(([\d,.]+) per million", text)
    assert false, text
    assert float(false.group(2).replace(",", "")) == pytest.approx(
        int(false.group(1)) * 1e6 / events, rel=1e-3, abs=0.06)
    per_detector = re.findall(r"^  (\S+)\s+(\d+)  detecting\s+(\d+)  false\s+(\d+)  other\s+(\d+)",
                              text, re.M)
    assert per_detector
    for _, tot, det, fal, oth in per_detector:
        assert int(tot) == int(det) + int(fal) + int(oth)
    assert sum(int(f) for _, _, _, f, _ in per_detector) == int(false.group(1))
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page


def test_simulate_needs_a_destination() -> None:
    res = _mlwatchd("simulate")
    assert res.returncode == 2 and "--out" in res.stderr


def test_eval_of_a_missing_file() -> None:
    res = _mlwatchd("eval", "/nonexistent/x.jsonl")
    assert res.returncode == 2 and "no such file" in res.stderr
