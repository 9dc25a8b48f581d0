"""``mlwatchd demo``: the whole product on one machine, nothing to set up.

Starts an embedded Kafka-protocol broker (Tansu) on a free loopback port,
produces a few simulated days of an ML platform's traffic with attacks and a
handful of malformed messages, runs the daemon (the same ``Daemon`` as
``mlwatchd run``, default config) until every event is committed, then shows
the findings, which injected attacks they caught, and what went to the
dead-letter topic. Everything is removed afterwards.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import orjson

from daemon.lab import clients
from daemon.lab.broker import EmbeddedBroker
from daemon.lab.evaluate import print_findings_scorecard
from daemon.lab.simulate import SCENARIOS, bad_messages, generate

__all__ = ["run_demo"]

PARTITIONS = 3
_SEVERITY_MARK = {"critical": "!!!", "high": "!! ", "medium": "!  ", "low": ".  ", "info": "   "}


def _say(text: str = "") -> None:
    print(text, flush=True)


def _settings(bootstrap: str, verbose: bool) -> Any:
    from daemon.settings import load

    os.environ.update({
        "MLWATCHD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MLWATCHD_KAFKA__GROUP_ID": "mlwatchd-demo",
        # Test-length group timeouts and Tansu's empty-partition fetch wait
        # (see README); production keeps Kafka's defaults.
        "MLWATCHD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "MLWATCHD_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "MLWATCHD_KAFKA__FETCH_MAX_WAIT_MS": "20",
        "MLWATCHD_OBSERVABILITY__HTTP_PORT": "0",
        "MLWATCHD_OBSERVABILITY__LOG_LEVEL": "info" if verbose else "warning",
        "MLWATCHD_OBSERVABILITY__LOG_FORMAT": "console",
    })
    return load(None)


def _produce(settings: Any, events: list[Any]) -> dict[str, int]:
    topics = {"inference": settings.topics.inference, "audit": settings.topics.audit,
              "access": settings.topics.access}
    producer = clients.producer(settings.kafka)
    counts: Counter[str] = Counter()
    for event in events:
        producer.send(topics[event.kind], key=event.key.encode(), value=orjson.dumps(event.body))
        counts[event.kind] += 1
    for kind, key, value in bad_messages():
        producer.send(topics[kind], key=key, value=value)
        counts["malformed"] += 1
    producer.flush()
    producer.close()
    return dict(counts)


def _show_findings(findings: list[dict[str, Any]]) -> None:
    _say(f"Findings ({len(findings)}), in event time:")
    for f in sorted(findings, key=lambda f: f["ts"]):
        entity = f"{f['entity']['type']}:{f['entity']['id']}"
        _say(f"  {_SEVERITY_MARK.get(f['severity'], '   ')} {f['ts'][5:16].replace('T', ' ')}  "
             f"{f['severity']:<8} {f['detector']:<26} {entity:<26}")
        _say(f"        {f['summary']}")
        if f["atlas"]:
            _say(f"        ATLAS {', '.join(f['atlas'])}")


def run_demo(events: int = 30_000, seed: int = 7, verbose: bool = False) -> int:
    """Run the demo; ``events`` is the number of benign inference events."""
    from daemon.logs import configure_logging
    from daemon.runtime import Daemon

    sim = generate(seed=seed, inference_events=events)
    _say(f"mlwatchd demo: {len(sim):,} events of a simulated ML platform over 8 days "
         f"(seed {seed}), {len(SCENARIOS)} attacks on the last day.")
    with tempfile.TemporaryDirectory(prefix="mlwatchd-demo-") as tmp, \
            EmbeddedBroker(log_path=os.path.join(tmp, "broker.log")) as broker:
        settings = _settings(broker.bootstrap, verbose)
        configure_logging(settings.observability.log_level, settings.observability.log_format)
        t = settings.topics
        broker.create_topics([t.inference, t.audit, t.access], partitions=PARTITIONS)
        broker.create_topics([t.findings, t.dlq], partitions=1)
        _say(f"Embedded Kafka-protocol broker (Tansu) on {broker.bootstrap}; "
             f"input topics with {PARTITIONS} partitions each.")
        started = time.monotonic()
        counts = _produce(settings, sim)
        total = sum(counts.values())
        _say(f"Produced {total:,} messages in {time.monotonic() - started:.1f}s: "
             + ", ".join(f"{k} {v:,}" for k, v in counts.items()))

        daemon = Daemon(settings)
        runner = threading.Thread(target=daemon.run, name="mlwatchd", daemon=True)
        started = time.monotonic()
        runner.start()
        while daemon.status is None or not daemon.health.ready:
            time.sleep(0.1)
        _say(f"mlwatchd is consuming (metrics: http://127.0.0.1:{daemon.status.port}/metrics) ...")
        last = -1
        while daemon.processed < total and runner.is_alive():
            time.sleep(0.5)
            if daemon.processed // 10_000 != last // 10_000:
                last = daemon.processed
                print(f"  {daemon.processed:,} / {total:,} events", file=sys.stderr, flush=True)
        elapsed = time.monotonic() - started
        daemon.request_stop()
        runner.join(timeout=60)
        _say(f"Processed {daemon.processed:,} events in {elapsed:.1f}s "
             f"({daemon.processed / max(elapsed, 1e-9):,.0f}/s, including group join).")
        _say()
        findings = [orjson.loads(m.value) for m in clients.read_topic(settings.kafka, t.findings)]
        _show_findings(findings)
        _say()
        caught = print_findings_scorecard(findings)
        dead = clients.read_topic(settings.kafka, t.dlq)
        reasons = Counter(dict(m.headers).get("mlwatchd.error.reason", b"?").decode()
                          for m in dead)
        _say()
        _say(f"Dead-letter topic: {len(dead)} malformed messages kept unchanged with their "
             f"reasons: {dict(reasons)}")
        _say(f"Caught {caught} of {len(SCENARIOS)} injected attacks. Findings went to topic "
             f"{t.findings}; try `mlwatchd replay` on your own JSON Lines next.")
    return 0
