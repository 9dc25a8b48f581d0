"""``mlwatchd replay --format NAME FILE`` reads every format's fixture as ``run`` reads Kafka.

Each fixture becomes a file (one message per line; a ``kcat -C -J`` dump for
the formats that read headers: KServe's CloudEvents, Seldon's x-request-id),
the real command line replays it with the fixture's options in the config,
and the events it reports, the lines it refuses and, where a detector fires on
the fixture, the findings must be what the fixture says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon.formats import FORMATS

from .fixture_io import ROOT, read_fixture

#: Formats whose messages carry meaning in headers: replayed from a kcat dump.
KCAT = {"kserve", "oip"}


def _files(tmp_path: Path, name: str) -> tuple[Path, Path, list[Any]]:
    [fixture] = sorted((ROOT / name).glob("*.jsonl"))
    options, messages = read_fixture(fixture)
    data = tmp_path / f"{name}.jsonl"
    lines = []
    for offset, m in enumerate(messages):
        if name in KCAT:
            flat = [x for key, value in m.headers for x in (key, value.decode())]
            lines.append(json.dumps({"topic": "t", "partition": 0, "offset": offset,
                                     "ts": m.timestamp_ms, "headers": flat,
                                     "payload": m.value.decode()}))
        else:
            assert b"\n" not in m.value
            lines.append(m.value.decode())
    data.write_text("\n".join(lines) + "\n")
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps({
        "observability": {"log_format": "json"},
        "detectors": {"access.privilege_grant": {}},
        "input": {"formats": {f"topic.{name}": {"format": name, "options": options}}},
    }))
    return data, config, messages


#: Runs ``mlwatchd replay`` (``daemon.cli.main``) once per job in one process (the
#: imports cost seconds), each with its own stdout and stderr files (fd level, so
#: the logger bound to stderr on first use follows).
_DRIVER = """
import json, os, sys
from daemon.cli import main
for argv, out, err in json.loads(sys.argv[1]):
    with open(out, "wb") as o, open(err, "wb") as e:
        saved = os.dup(1), os.dup(2)
        os.dup2(o.fileno(), 1)
        os.dup2(e.fileno(), 2)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    print(json.dumps(code))
"""


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Format name -> (exit code, stdout, stderr, data file, fixture messages)."""
    jobs, files = [], {}
    for name in sorted(FORMATS):
        folder = tmp_path_factory.mktemp(name)
        data, config, messages = _files(folder, name)
        argv = ["replay", "--config", str(config), "--format", name,
                *(["--kcat"] if name in KCAT else []), str(data)]
        jobs.append([argv, str(folder / "out"), str(folder / "err")])
        files[name] = (folder, data, messages)
    run = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(jobs)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    codes = [json.loads(line) for line in run.stdout.splitlines()]
    return {name: (code, (folder / "out").read_text(), (folder / "err").read_text(), data,
                   messages)
            for code, (name, (folder, data, messages)) in zip(codes, files.items(), strict=True)}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_replay_reads_each_formats_fixture_from_the_command_line(
        replayed: dict[str, Any], name: str) -> None:
    code, stdout, stderr, data, messages = replayed[name]
    assert code == 0, stderr
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [done] = [entry for entry in logs if entry.get("event") == "replay_done"]
    assert done["events"] == sum(len(m.expect.get("events", [])) for m in messages)
    assert done["bad_lines"] == sum(bool(m.expect.get("dead_letters")) for m in messages)
    bad = [entry for entry in logs if entry.get("event") == "bad_line"]
    assert {entry["format"] for entry in bad} <= {name}
    findings = [json.loads(line) for line in stdout.splitlines()]
    assert done["findings"] == len(findings)
    self_grants = sorted(f["entity"]["id"] for f in findings if f["evidence"].get("self_grant"))
    if name == "k8s-audit":
        assert self_grants == ["alice@example.com"]
        assert findings[0]["sources"][0]["topic"] == str(data)
    if name == "cloudtrail":
        assert any(e.endswith(":user/mallory") for e in self_grants), self_grants
