"""StreamAlert-style fixtures: positive files fire where expected, negative files never."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from make_fixtures import DIR, build

from detectors.events import decode_any, event_type_of
from detectors.findings import Finding, Source
from detectors.registry import REGISTRY
from detectors.registry import build as build_detector

SPECS = sorted(DIR.glob("*.expected.json"))


def _run(detector_name: str, path: Path) -> list[tuple[int, Finding]]:
    detector = build_detector(detector_name)
    found: list[tuple[int, Finding]] = []
    for line_no, raw in enumerate(path.read_bytes().splitlines(), start=1):
        event = decode_any(raw)
        if event_type_of(event) not in detector.event_types:
            continue
        for finding in detector.process(event, Source(f"file:{path.name}", 0, line_no)) or ():
            found.append((line_no, finding))
    return found


def test_every_access_detector_has_fixtures():
    named = {json.loads(p.read_text())["detector"] for p in SPECS}
    assert named == {name for name in REGISTRY if name.startswith("access.")}


def test_fixture_files_are_what_the_generator_makes():
    for name, content in build().items():
        assert (DIR / name).read_text() == content, f"{name} is stale: run make_fixtures.py"


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.name.split(".")[0])
def test_positive_fixture_fires_exactly_where_expected(spec_path):
    spec = json.loads(spec_path.read_text())
    found = _run(spec["detector"], DIR / spec["positive"])
    assert [line for line, _ in found] == [f["line"] for f in spec["findings"]]
    for (line, finding), want in zip(found, spec["findings"], strict=True):
        assert finding.detector == spec["detector"]
        assert finding.kind == want["kind"], line
        assert finding.severity == want["severity"], line
        assert {"type": finding.entity.type, "id": finding.entity.id} == want["entity"]
        for key, value in want["evidence"].items():
            assert finding.evidence[key] == value, (line, key)
        assert finding.sources[0].offset == line  # the triggering event comes first
        assert finding.summary.endswith(".") and len(finding.summary) < 400
        assert all(re.fullmatch(r"AML\.T\d{4}(\.\d{3})?", a) for a in finding.atlas)


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.name.split(".")[0])
def test_negative_fixture_stays_quiet(spec_path):
    spec = json.loads(spec_path.read_text())
    assert _run(spec["detector"], DIR / spec["negative"]) == []


@pytest.mark.parametrize("spec_path", SPECS, ids=lambda p: p.name.split(".")[0])
def test_replaying_the_positive_file_gives_the_same_finding_ids(spec_path):
    spec = json.loads(spec_path.read_text())
    first = [f.finding_id for _, f in _run(spec["detector"], DIR / spec["positive"])]
    again = [f.finding_id for _, f in _run(spec["detector"], DIR / spec["positive"])]
    assert first and first == again
