"""The chart's interactivity Service reaches a listener that serves Slack's callbacks only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import by_kind, load_values, one, render

from daemon.settings import load


def _pod_settings(docs: list[dict[str, Any]], tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Any:
    """The daemon's settings as the pod would load them (secrets: stand-in values)."""
    cm = next(d for d in by_kind(docs, "ConfigMap") if "mlwatchd.yaml" in d["data"])
    config = tmp_path / "mlwatchd.yaml"
    config.write_text(cm["data"]["mlwatchd.yaml"], encoding="utf-8")
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for entry in container["env"]:
        if entry["name"] == "MLWATCHD_PLAYBOOKS__DIR":
            continue  # the image's folder; the shipped playbooks are used here
        monkeypatch.setenv(entry["name"], entry.get("value", "s" * 32))
    return load(config)


def _container_ports(docs: list[dict[str, Any]]) -> dict[str, int]:
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_interactivity_service_points_at_the_daemons_interactivity_listener(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(load_values("values-scaled.yaml"))
    settings = _pod_settings(docs, tmp_path, monkeypatch)
    ports = _container_ports(docs)
    services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    inter = next(s for n, s in services.items() if n.endswith("-interactivity"))
    metrics = next(s for n, s in services.items() if n.endswith("-metrics"))
    assert settings.playbooks.interactivity.enabled
    obs = settings.observability
    assert ports[inter["spec"]["ports"][0]["targetPort"]] == obs.interactivity_port
    assert ports[metrics["spec"]["ports"][0]["targetPort"]] == obs.http_port
    assert obs.interactivity_port != obs.http_port
    assert obs.interactivity_host == "0.0.0.0"


def test_without_interactivity_nothing_listens_for_callbacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render({})
    settings = _pod_settings(docs, tmp_path, monkeypatch)
    assert settings.observability.interactivity_port is None
    assert not settings.playbooks.interactivity.enabled
    assert "interactivity" not in _container_ports(docs)


def test_interactivity_needs_a_signing_secret_and_its_own_port() -> None:
    with pytest.raises(Exception, match=r"playbooks\.interactivity\.signing_secret"):
        render({"interactivity": {"enabled": True}})
    values = load_values("values-scaled.yaml")
    values["interactivity"]["port"] = 9308
    values.setdefault("metrics", {})["port"] = 9308
    with pytest.raises(Exception, match=r"must differ from metrics\.port"):
        render(values)
