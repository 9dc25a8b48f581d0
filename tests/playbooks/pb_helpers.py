"""Helpers for the response engine tests: findings, recorders, receivers, waits.

The fake Slack is the lab's (``daemon.lab.fake_slack``; real slack-sdk clients talk to it
over HTTP); a small webhook receiver and an interactivity endpoint (what the
daemon's HTTP server does for ``POST /slack/interactions``) live here.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from detectors.findings import Entity, Finding, Source
from playbooks.model import PlaybookSet, load_playbooks

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
PSEUDO_KEY = b"0123456789abcdef-test-key"
_counter = iter(range(1, 10_000_000))


def build_finding(**overrides: Any) -> Finding:
    """A high-severity extraction finding by principal mallory; fresh id per call."""
    args: dict[str, Any] = {
        "detector": "extraction.prada",
        "kind": "model_extraction",
        "severity": "high",
        "entity": Entity("principal", "mallory"),
        "model_id": "fraud-scorer",
        "summary": "mallory's queries look like a PRADA extraction attack from 10.1.2.3",
        "evidence": {"shapiro_w": 0.71, "threshold": 0.9, "queries": 412,
                     "features": [5.1, 3.5, 1.4], "payload": "secret-row-data",
                     "top_features": {"amount": 0.4, "age": 0.1}},
        "atlas": ["AML.T0024.002"],
        "event_ts": 1_700_000_000.0,
        "sources": [Source("ml.inference", 0, next(_counter))],
    }
    args.update(overrides)
    return Finding.build(**args)


class Events:
    """Collects on_event calls from any thread; tests wait on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, fields: dict[str, Any]) -> None:
        with self._cond:
            self.calls.append((name, fields))
            self._cond.notify_all()

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, _ in self.calls]

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [f for n, f in self.calls if n == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            ok = self._cond.wait_for(lambda: sum(n == name for n, _ in self.calls) >= count,
                                     timeout)
            if not ok:
                raise TimeoutError(f"{count} x {name} not seen; got {self.names()}")
            return [f for n, f in self.calls if n == name]


class Published:
    """A recording ``publish`` callable (the Kafka tests use the real broker instead)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.records: list[tuple[str, bytes | None, dict[str, Any], list[tuple[str, bytes]]]] = []

    def __call__(self, topic: str, key: bytes | None, value: bytes,
                 headers: list[tuple[str, bytes]]) -> None:
        with self._cond:
            self.records.append((topic, key, json.loads(value), headers))
            self._cond.notify_all()

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._cond:
            return [v for t, _, v, _ in self.records if t == topic]

    def wait_on(self, topic: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            self._cond.wait_for(lambda: len([r for r in self.records if r[0] == topic]) >= count,
                                timeout)
        got = self.on(topic)
        if len(got) < count:
            raise TimeoutError(f"{len(got)} < {count} records on {topic}")
        return got


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A local HTTP server recording POSTs; ``statuses`` scripts the next answers."""

    def __init__(self, handler: Callable[[dict[str, str], bytes], tuple[int, bytes]] | None = None
                 ) -> None:
        self.requests: list[Received] = []
        self.statuses: list[int] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if handler is not None:
                    status, out = handler(headers, raw)
                else:
                    with receiver.cond:
                        status = receiver.statuses.pop(0) if receiver.statuses else 202
                    out = b'{"status":"success"}'
                with receiver.cond:
                    receiver.requests.append(Received(self.path, headers, raw))
                    receiver.cond.notify_all()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def wait(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} < {count} requests")
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_playbooks(folder: Path, text: str) -> PlaybookSet:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    return load_playbooks(folder)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("condition not met")
