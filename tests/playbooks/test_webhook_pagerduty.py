"""Webhook and PagerDuty actions against local receivers; TLS verification cannot be disabled."""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pb_helpers import PSEUDO_KEY, build_finding, write_playbooks

from playbooks.model import PlaybookError
from playbooks.privacy import Pseudonymizer

SECRET = "whsec-test-0123456789"


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch):
    monkeypatch.setenv("PB_HOOK_SECRET", SECRET)
    monkeypatch.setenv("PB_PD_KEY", "R0UTINGKEY0000000000000000000000")


def hook_playbook(url: str, extra: str = "") -> str:
    return f"""
    actions:
      hook:
        type: webhook
        params:
          url: "{url}"
          secret_env: PB_HOOK_SECRET
          timeout: 2s
          headers: {{X-Team: ml-sec}}
          body:
            title: "[{{severity}}] {{kind}} on {{entity.type}} {{entity.id}}"
            finding: "{{finding_id}}"
            count: "{{incident.count}}"
            evidence: "{{evidence}}"
            mitigations: "{{mitigations}}"
{extra}
    routes:
      - name: hooked
        match: {{}}
        actions: [hook]
        mitigations: [AML.M0019]
    """


def test_webhook_body_is_templated_signed_and_pseudonymised(engine_factory, receiver):
    engine, events = engine_factory(hook_playbook(receiver.url + "/in"), slack_route=None)
    finding = build_finding()
    engine.submit(finding)
    events.wait_for("action_delivered")
    [req] = receiver.requests
    expected = hmac.new(SECRET.encode(), req.body, hashlib.sha256).hexdigest()
    assert req.headers["x-mlwatchd-signature"] == f"sha256={expected}"
    assert req.headers["idempotency-key"] == f"{finding.finding_id}:hooked:hook"
    assert req.headers["x-team"] == "ml-sec"
    body = req.json()
    alias = Pseudonymizer(PSEUDO_KEY).pseudonym("mallory")
    assert body["title"] == f"[high] model_extraction on principal {alias}"
    assert body["count"] == 1 and body["mitigations"] == ["AML.M0019"]
    assert body["evidence"] == {"shapiro_w": 0.71, "threshold": 0.9, "queries": 412,
                                "top_features": {"amount": 0.4, "age": 0.1}}
    raw = req.body.decode()
    assert "mallory" not in raw and "secret-row-data" not in raw and SECRET not in raw


def test_webhook_5xx_and_429_are_retried(engine_factory, receiver):
    receiver.statuses = [503, 429, 500]
    engine, events = engine_factory(hook_playbook(receiver.url), slack_route=None)
    engine.submit(build_finding())
    events.wait_for("action_delivered", timeout=10)
    assert [r["status"] for r in events.of("action_retry")] == [503, 429, 500]
    assert len(receiver.requests) == 4
    # Every attempt carries the same idempotency key, so the receiver can dedup.
    assert len({r.headers["idempotency-key"] for r in receiver.requests}) == 1


def test_webhook_4xx_fails_at_once(engine_factory, receiver):
    receiver.statuses = [400]
    engine, events = engine_factory(hook_playbook(receiver.url), slack_route=None)
    engine.submit(build_finding())
    [failed] = events.wait_for("action_failed")
    assert failed["status"] == 400 and len(receiver.requests) == 1


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def https_receiver(self_signed):
    cert, key = self_signed
    hits: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            hits.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/hook", hits, cert
    server.shutdown()
    server.server_close()


def test_untrusted_certificate_fails_and_nothing_is_sent(engine_factory, https_receiver):
    url, hits, _cert = https_receiver
    engine, events = engine_factory(hook_playbook(url), slack_route=None)
    engine.submit(build_finding())
    [failed] = events.wait_for("action_failed")
    assert failed["error"].startswith("TLS") and "certificate" in failed["error"]
    assert hits == []


def test_a_private_ca_is_trusted_via_ca_file(engine_factory, https_receiver):
    url, hits, cert = https_receiver
    engine, events = engine_factory(
        hook_playbook(url).replace("timeout: 2s", f"timeout: 2s\n          ca_file: {cert}"),
        slack_route=None)
    engine.submit(build_finding())
    events.wait_for("action_delivered")
    assert len(hits) == 1


@pytest.mark.parametrize("switch", ["verify: false", "insecure: true", "verify_tls: false",
                                    "ssl_verify: false"])
def test_tls_verification_has_no_off_switch(tmp_path, switch):
    text = hook_playbook("https://hooks.example.com/x").replace(
        "timeout: 2s", f"timeout: 2s\n          {switch}")
    with pytest.raises(PlaybookError) as err:
        write_playbooks(tmp_path, text)
    [line] = err.value.problems
    assert "actions.hook.params." + switch.split(":")[0] in line and "Extra inputs" in line


def test_plain_http_only_to_loopback(tmp_path):
    with pytest.raises(PlaybookError) as err:
        write_playbooks(tmp_path, hook_playbook("http://hooks.example.com/x"))
    assert "must be https://" in err.value.problems[0]


def test_pagerduty_triggers_then_resolves_with_one_dedup_key(engine_factory, receiver):
    text = f"""
    actions:
      page:
        type: pagerduty
        params:
          url: "{receiver.url}/v2/enqueue"
          routing_key_env: PB_PD_KEY
          link: "https://dash.example.com/f/{{finding_id}}"
    routes:
      - name: paged
        match: {{}}
        actions: [page]
        dedup: {{window: 0.4s}}
    """
    engine, events = engine_factory(text, slack_route=None)
    finding = build_finding(severity="critical")
    engine.submit(finding)
    events.wait_for("incident_resolved", timeout=5)
    events.wait_for("action_delivered", 2)
    trigger, resolve = (r.json() for r in receiver.requests)
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == f"mlwatchd:paged:{finding.finding_id}"
    assert trigger["routing_key"] == "R0UTINGKEY0000000000000000000000"
    payload = trigger["payload"]
    assert payload["severity"] == "critical" and payload["component"] == "fraud-scorer"
    assert payload["class"] == "extraction.prada" and payload["group"] == "model_extraction"
    assert trigger["links"][0]["href"] == f"https://dash.example.com/f/{finding.finding_id}"
    raw = json.dumps(trigger)
    assert "mallory" not in raw and "10.1.2.3" not in raw and "secret-row-data" not in raw
