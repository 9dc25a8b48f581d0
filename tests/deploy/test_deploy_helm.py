"""The Helm chart: rendered by Helm's own engine, validated against Kubernetes schemas.

Rendering uses helm-python-sdk (Helm v4's Go SDK through ctypes; no helm
binary). Built-in kinds are validated with kubernetes-validate (strict: unknown
fields are errors) for the oldest supported and the newest bundled Kubernetes
version. ServiceMonitor and ScaledObject are CRDs with no schema bundled:
schema validation is skipped for those two kinds only, and they are checked
structurally here instead.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import CHART, REPO, by_kind, load_values, one, render

kv = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate not installed (pip install kubernetes-validate)",
)
Rendered = tuple[dict[str, Any], list[dict[str, Any]]]

# kubeVersion in Chart.yaml is >=1.25; validate against that and the newest bundled.
K8S_VERSIONS = ("1.25.0", kv.latest_version())
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}
SECRET_CONFIG_KEYS = ("webhook_url", "bot_token", "sasl_plain_password", "key", "signing_secret")

VALUE_SETS = {
    "default": lambda: {},
    "scaled": lambda: load_values("values-scaled.yaml"),
    "secret-files": lambda: {**load_values("values-scaled.yaml"),
                             "secrets": {**load_values("values-scaled.yaml")["secrets"],
                                         "asFiles": True}},
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    values = VALUE_SETS[request.param]()
    return values, render(values)


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    """values.yaml overlaid with ``values`` (enough of Helm's merge for these tests)."""
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for k, v in over.items():
                out[k] = merge(base.get(k), v)
            return out
        return copy.deepcopy(over)
    return merge(yaml.safe_load((CHART / "values.yaml").read_text()), values)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


# ---------------------------------------------------------------- rendering

def test_helm_lint_has_no_errors() -> None:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed")
    result = helm.lint(str(CHART))
    assert result["errors"] == [], result
    # severity 1 = INFO (e.g. "icon is recommended"); anything above is a finding
    assert [m for m in result["messages"] if m["severity"] > 1] == [], result


def test_expected_objects(rendered: Rendered) -> None:
    values, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                "ServiceAccount"]
    if values.get("interactivity", {}).get("enabled"):
        expected.append("Service")
    if values.get("metrics", {}).get("serviceMonitor", {}).get("enabled"):
        expected.append("ServiceMonitor")
    if values.get("keda", {}).get("enabled"):
        expected.append("ScaledObject")
    assert kinds == sorted(expected)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate object names"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(
        rendered: Rendered, version: str) -> None:
    _, docs = rendered
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue  # no bundled schema; see test_servicemonitor / test_scaledobject
        kv.validate(doc, version, strict=True)  # raises ValidationError with the path
        checked += 1
    assert checked >= 6


def test_schema_validation_catches_mistakes() -> None:
    """The validator is not a no-op: a misspelt field and a wrong type are rejected."""
    docs = render()
    dep = copy.deepcopy(one(docs, "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)
    dep = copy.deepcopy(one(docs, "Deployment"))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)


# ---------------------------------------------------------------- properties

def test_pod_runs_non_root_read_only(rendered: Rendered) -> None:
    _, docs = rendered
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    psc, c = pod["securityContext"], container(docs)
    csc = c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0 and psc["runAsGroup"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # the read-only root needs writable emptyDirs for state/outbox and /tmp
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/var/lib/mlwatchd"]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert set(mounts.values()) <= set(volumes), "a volumeMount names no volume"


def test_probes_and_ports(rendered: Rendered) -> None:
    values, docs = rendered
    c = container(docs)
    port = merged_values(values)["metrics"]["port"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    env = env_of(c)
    # the status server binds 127.0.0.1 by default: probes would fail without this
    assert env["MLWATCHD_OBSERVABILITY__HTTP_HOST"]["value"] == "0.0.0.0"
    assert env["MLWATCHD_OBSERVABILITY__HTTP_PORT"]["value"] == str(port)
    assert c["args"] == ["run", "--config", "/etc/mlwatchd/mlwatchd.yaml"]
    assert "command" not in c, "keep the image's ENTRYPOINT (mlwatchd)"


def test_resources_set(rendered: Rendered) -> None:
    _, docs = rendered
    res = container(docs)["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[part]), part


def test_config_and_playbooks_mounted(rendered: Rendered) -> None:
    values, docs = rendered
    c = container(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    cfg = mounts["/etc/mlwatchd/mlwatchd.yaml"]
    assert cfg["subPath"] == "mlwatchd.yaml"
    assert "mlwatchd.yaml" in cms[volumes[cfg["name"]]["configMap"]["name"]]["data"]
    playbook_dir = env_of(c)["MLWATCHD_PLAYBOOKS__DIR"]["value"]
    files = merged_values(values)["playbooks"]["files"]
    if not files:  # the image's default playbooks stay visible: nothing mounted over them
        assert playbook_dir not in mounts and "playbooks" not in volumes
    else:
        pb = mounts[playbook_dir]
        assert pb["readOnly"] is True
        pb_cm = cms[volumes[pb["name"]]["configMap"]["name"]]
        assert set(pb_cm["data"]) == set(files)
    # config changes roll the pods
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64


def test_playbooks_dir_is_configurable() -> None:
    docs = render({"playbooks": {"dir": "/srv/playbooks", "files": {"a.yaml": "x: 1\n"}}})
    c = container(docs)
    assert env_of(c)["MLWATCHD_PLAYBOOKS__DIR"]["value"] == "/srv/playbooks"
    assert "/srv/playbooks" in {m["mountPath"] for m in c["volumeMounts"]}


def _walk_keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [k for k in node] + [k2 for v in node.values() for k2 in _walk_keys(v)]
    if isinstance(node, list):
        return [k for v in node for k in _walk_keys(v)]
    return []


def test_secrets_are_references_never_inlined(
        rendered: Rendered) -> None:
    values, docs = rendered
    merged = merged_values(values)
    assert by_kind(docs, "Secret") == [], "the chart must not create Secrets from values"
    shipped = yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["mlwatchd.yaml"])
    for key in _walk_keys(shipped):
        assert key not in SECRET_CONFIG_KEYS, f"secret key {key!r} in the ConfigMap"
    c = container(docs)
    env = env_of(c)
    for name, entry in env.items():
        if any(s.upper() in name for s in SECRET_CONFIG_KEYS) and not name.endswith("_FILE"):
            assert "value" not in entry, f"{name} has an inline value"
    secret_name = merged["secrets"]["existingSecret"]
    used = {k: v for k, v in merged["secrets"]["keys"].items() if v and secret_name}
    for config_key, secret_key in used.items():
        var = "MLWATCHD_" + config_key.replace(".", "__").upper()
        if merged["secrets"]["asFiles"]:
            assert var not in env
            assert env[var + "_FILE"]["value"] == f"{merged['secrets']['mountPath']}/{secret_key}"
        else:
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": secret_name, "key": secret_key}
    if used and merged["secrets"]["asFiles"]:
        pod = one(docs, "Deployment")["spec"]["template"]["spec"]
        vol = next(v for v in pod["volumes"] if "secret" in v)
        assert vol["secret"]["secretName"] == secret_name
        mount = next(m for m in c["volumeMounts"] if m["name"] == vol["name"])
        assert mount["readOnly"] is True
    if values == {}:
        assert not used and not any("secretKeyRef" in str(e) for e in env.values())


def test_metrics_service_and_scrape_annotations(
        rendered: Rendered) -> None:
    values, docs = rendered
    dep = one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    port = merged_values(values)["metrics"]["port"]
    services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
    metrics = next(s for n, s in services.items() if n.endswith("-metrics"))
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    assert metrics["spec"]["publishNotReadyAddresses"] is True
    assert [p["targetPort"] for p in metrics["spec"]["ports"]] == ["metrics"]
    for notes in (metrics["metadata"]["annotations"],
                  dep["spec"]["template"]["metadata"]["annotations"]):
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/port"] == str(port)
        assert notes["prometheus.io/path"] == "/metrics"
    if merged_values(values)["interactivity"]["enabled"]:
        inter = next(s for n, s in services.items() if n.endswith("-interactivity"))
        names = {p["name"] for p in container(docs)["ports"]}
        assert inter["spec"]["ports"][0]["targetPort"] in names
        assert inter["spec"]["selector"].items() <= pod_labels.items()


def test_pdb_selects_the_pods(rendered: Rendered) -> None:
    _, docs = rendered
    pdb = one(docs, "PodDisruptionBudget")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


# ---------------------------------------------------------------- CRDs (structural)

def test_servicemonitor() -> None:
    docs = render(load_values("values-scaled.yaml"))
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(sm["spec"]) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    svc = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["security"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}


def test_scaledobject() -> None:
    values = load_values("values-scaled.yaml")
    docs = render(values)
    so, dep = one(docs, "ScaledObject"), one(docs, "Deployment")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert "replicas" not in dep["spec"], "KEDA's HPA owns the replica count"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": dep["metadata"]["name"]}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= values["kafkaPartitions"]
    topics = values["config"]["topics"]
    assert [t["metadata"]["topic"] for t in spec["triggers"]] == [
        topics["inference"], topics["audit"], topics["access"]]
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == values["config"]["kafka"]["bootstrap_servers"]
        assert meta["consumerGroup"] == values["config"]["kafka"]["group_id"]
        assert meta["lagThreshold"] == "5000"
        # KEDA reads trigger metadata as strings
        assert all(isinstance(v, str) for v in meta.values()), meta
        assert trigger["authenticationRef"] == {"name": "mlwatchd-kafka-auth"}


@pytest.mark.parametrize("values", [
    {"replicaCount": 7, "kafkaPartitions": 6},
    {"keda": {"enabled": True, "maxReplicaCount": 13}, "kafkaPartitions": 12},
    {"kafkaPartitions": 0},
])
def test_refuses_more_consumers_than_partitions(values: dict[str, Any]) -> None:
    with pytest.raises(Exception, match="kafkaPartitions"):
        render(values)


# ---------------------------------------------------------------- the shipped config

def _check_config_env(c: dict[str, Any], tmp: Path, merged: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets, with dummy secrets standing in for the kubelet's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWATCHD_")}
    for name, entry in env_of(c).items():
        if "value" in entry:
            value = entry["value"]
            if name.endswith("_FILE"):  # secret mounted as a file: make a stand-in
                stand_in = tmp / Path(value).name
                stand_in.write_text("dummy-secret-value-0123456789\n")
                value = str(stand_in)
            env[name] = value
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[name] = "dummy-secret-value-0123456789"
    return env


def _playbooks_as_in_the_pod(docs: list[dict[str, Any]], tmp: Path) -> Path:
    """The playbook folder the pod reads: the mounted ConfigMap's files if the
    chart mounts them, else the image's copy of config/playbooks (Dockerfile COPY)."""
    folder = tmp / "playbooks"
    folder.mkdir()
    mounted = any(m["name"] == "playbooks" for m in container(docs).get("volumeMounts", []))
    if mounted:
        cm = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith(
            "-playbooks"))
        for name, text in (cm.get("data") or {}).items():
            (folder / name).write_text(text, encoding="utf-8")
    else:
        for source in (REPO / "config" / "playbooks").glob("*.yaml"):
            shutil.copy(source, folder / source.name)
    return folder


def test_shipped_config_passes_check_config(
        rendered: Rendered, tmp_path: Path) -> None:
    """The real CLI accepts the ConfigMap's config with the container's environment."""
    values, docs = rendered
    cm = next(d for d in by_kind(docs, "ConfigMap") if "mlwatchd.yaml" in d["data"])
    config = tmp_path / "mlwatchd.yaml"
    config.write_text(cm["data"]["mlwatchd.yaml"], encoding="utf-8")
    env = _check_config_env(container(docs), tmp_path, merged_values(values))
    env["MLWATCHD_PLAYBOOKS__DIR"] = str(_playbooks_as_in_the_pod(docs, tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())",
         "check-config", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("config OK"), proc.stdout
    merged = merged_values(values)
    assert f"kafka {merged['config']['kafka']['bootstrap_servers']}" in proc.stdout
    if merged["secrets"]["existingSecret"] and merged["secrets"]["keys"]["slack.bot_token"]:
        assert "slack: bot token" in proc.stdout


def test_chart_config_names_every_topic_the_daemon_has() -> None:
    """values.yaml's config.topics lists every TopicSettings key (ocsf included), and an
    ``ocsf`` topic set in values reaches the rendered config and the loaded settings."""
    from daemon.settings import Settings

    topics = yaml.safe_load((CHART / "values.yaml").read_text())["config"]["topics"]
    assert set(topics) == set(Settings.model_fields["topics"].annotation.model_fields)
    docs = render({"config": {"topics": {"ocsf": "siem.ocsf"}}})
    cm = next(d for d in by_kind(docs, "ConfigMap") if "mlwatchd.yaml" in d["data"])
    shipped = yaml.safe_load(cm["data"]["mlwatchd.yaml"])
    assert shipped["topics"]["ocsf"] == "siem.ocsf"
    assert Settings(**{"topics": shipped["topics"]}).topics.ocsf == "siem.ocsf"
    default = yaml.safe_load(next(d for d in by_kind(render({}), "ConfigMap")
                                  if "mlwatchd.yaml" in d["data"])["data"]["mlwatchd.yaml"])
    assert Settings(**{"topics": default["topics"]}).topics.ocsf == ""  # off by default


def test_check_config_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    """A broken chart config is rejected by the same check."""
    docs = render({"config": {"kafka": {"heartbeat_interval_ms": 40000}}})
    cm = next(d for d in by_kind(docs, "ConfigMap") if "mlwatchd.yaml" in d["data"])
    config = tmp_path / "mlwatchd.yaml"
    config.write_text(cm["data"]["mlwatchd.yaml"], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLWATCHD_")}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from daemon.cli import main; sys.exit(main())",
         "check-config", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode != 0
    assert "heartbeat_interval_ms" in proc.stderr


def test_kafka_state_store_needs_a_signing_key_reference() -> None:
    values = {"config": {"state": {"store": "kafka"}}}
    with pytest.raises(Exception, match=r"state\.signing_key"):
        render(values)
    docs = render({**values, "secrets": {"existingSecret": "s",
                                         "keys": {"state.signing_key": "state-key"}}})
    env = {e["name"]: e for e in one(docs, "Deployment")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["MLWATCHD_STATE__SIGNING_KEY"]["valueFrom"]["secretKeyRef"] == \
        {"name": "s", "key": "state-key"}
