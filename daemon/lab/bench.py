"""``mlwatchd bench``: how much of kafka-python's own speed mlwatchd keeps.

One embedded broker, one topic of realistic inference events, then:

(a) a bare kafka-python consumer that decodes each message with orjson;
(b) ``mlwatchd run`` as a real process with the default config's detectors,
    timed by its committed offsets (start-up and group join excluded).

Prints both rates and their ratio (target >= 0.6). ``--client confluent``
(or ``both``) runs (a) and (b) on librdkafka too (``kafka.client: confluent``),
``--runs N`` repeats each measurement and prints medians. ``--decode``
compares the event decoders alone (msgspec typed decode vs orjson + per-field
checks vs pydantic). ``--gc`` measures garbage-collection pauses in the
decode + detect path with CPython's defaults and with the settings
``mlwatchd run`` applies after start-up (``gc.freeze`` and a higher gen0
threshold).
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson

from daemon.lab.broker import EmbeddedBroker

__all__ = ["run_bench"]

TOPIC = "ml.inference"


def sample_events(n: int, seed: int = 1, principals: int = 2000) -> list[bytes]:
    """Realistic inference events of ~300 bytes, a steady mix of callers."""
    rng = random.Random(seed)
    t0 = 1_767_225_600.0
    out = []
    for i in range(n):
        p1 = rng.random()
        out.append(orjson.dumps({
            "ts": t0 + i * 0.01,
            "model_id": "fraud-scorer",
            "model_version": "3",
            "request_id": f"req-{i:09d}",
            "principal": f"api-key-{rng.randrange(principals):05d}",
            "source_ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "features": [round(rng.gauss(0, 1), 4) for _ in range(8)],
            "prediction": int(p1 > 0.5),
            "probabilities": [round(1 - p1, 4), round(p1, 4)],
            "latency_ms": round(rng.uniform(1, 30), 2),
        }))
    return out


def _produce(bootstrap: str, values: list[bytes]) -> None:
    from daemon.lab import clients

    producer = clients.producer(bootstrap)
    for value in values:
        producer.send(TOPIC, value=value)
    producer.flush()
    producer.close()


#: Both consumers subscribe to the daemon's three input topics with the same
#: fetch settings, so the ratio isolates mlwatchd's own cost. Tansu answers a
#: fetch only after fetch_max_wait_ms when any fetched partition is empty (a
#: real Kafka answers as soon as fetch_min_bytes is there), hence the short wait.
FETCH_MAX_WAIT_MS = 20
INPUTS = (TOPIC, "ml.audit", "ml.access")


def bare_consumer_rate(bootstrap: str, n: int, client: str = "kafka-python",
                       group: str = "bench-bare") -> float:
    """Messages/s of a plain group consumer (``client``) with orjson decoding.

    Built raw on purpose (not with :mod:`daemon.lab.clients` or
    :mod:`daemon.kafka_io`): it is the baseline mlwatchd is measured against,
    a consumer with nothing of mlwatchd's in it.
    """
    if client == "confluent":
        return _bare_confluent_rate(bootstrap, n, group)
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(*INPUTS, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=1000,
                             max_poll_records=2000, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
    seen = 0
    started = None
    loads = orjson.loads
    while seen < n:
        for messages in consumer.poll(timeout_ms=500, max_records=2000).values():
            if started is None:
                started = time.perf_counter()
            for message in messages:
                loads(message.value)
            seen += len(messages)
            consumer.commit()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return n / elapsed


def _bare_confluent_rate(bootstrap: str, n: int, group: str) -> float:
    """As :func:`bare_consumer_rate`, with a plain confluent-kafka (librdkafka) consumer."""
    import confluent_kafka

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": FETCH_MAX_WAIT_MS})
    consumer.subscribe(list(INPUTS))
    seen = 0
    started = None
    loads = orjson.loads
    while seen < n:
        messages: list[Any] = consumer.consume(num_messages=2000, timeout=0.5)
        if not messages:
            continue
        if started is None:
            started = time.perf_counter()
        for message in messages:
            if message.error() is None:
                loads(message.value())
                seen += 1
        consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return n / elapsed


def _committed(admin: Any, group: str) -> int:
    offsets = admin.list_group_offsets(group)
    table = offsets.get(group, offsets)
    return sum(meta.offset for meta in table.values())


def mlwatchd_rate(bootstrap: str, n: int, config: str | None, client: str = "kafka-python",
                  group: str = "bench-mlwatchd") -> tuple[float, float]:
    """Messages/s of ``mlwatchd run`` from its committed offsets; also its peak RSS (MiB)."""
    from daemon.lab import clients

    env = dict(os.environ)
    env.update({
        "MLWATCHD_KAFKA__CLIENT": client,
        "MLWATCHD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MLWATCHD_KAFKA__GROUP_ID": group,
        "MLWATCHD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "MLWATCHD_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "MLWATCHD_KAFKA__FETCH_MAX_WAIT_MS": str(FETCH_MAX_WAIT_MS),
        "MLWATCHD_OBSERVABILITY__HTTP_PORT": "null",
        "MLWATCHD_OBSERVABILITY__LOG_LEVEL": "warning",
    })
    cmd = [sys.executable, "-m", "daemon.cli", "run"] + (["--config", config] if config else [])
    # Kept open for the child's whole life, and kept afterwards to read on failure.
    log = tempfile.NamedTemporaryFile(prefix="mlwatchd-bench-", suffix=".log",  # noqa: SIM115
                                      delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    admin = clients.admin(bootstrap)
    try:
        low, first_at = max(1, n // 20), None
        done_at = None
        start_count = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"mlwatchd exited early; see {log.name}")
            try:
                count = _committed(admin, group)
            except Exception:
                count = 0
            now = time.perf_counter()
            if first_at is None and count >= low:
                first_at, start_count = now, count
            if count >= n:
                done_at = now
                break
            time.sleep(0.05)
        if first_at is None or done_at is None:
            raise RuntimeError("mlwatchd did not finish the topic in time")
        rss = _peak_rss_mib(proc.pid)
    finally:
        admin.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return (n - start_count) / (done_at - first_at), rss


def _peak_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def decode_rates(n: int = 100_000) -> dict[str, float]:
    """Events/s of three ways to decode and validate an inference event."""
    import pydantic

    from detectors.events import decode_event

    values = sample_events(n)

    def naive(raw: bytes) -> dict[str, Any]:
        obj = orjson.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        for name, kinds in (("model_id", str), ("request_id", str), ("principal", str),
                            ("prediction", (str, int, float))):
            if not isinstance(obj.get(name), kinds):
                raise ValueError(name)
        ts = obj["ts"]
        if not isinstance(ts, int | float | str):
            raise ValueError("ts")
        feats = obj["features"]
        if isinstance(feats, list):
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in feats):
                raise ValueError("features")
        elif not isinstance(feats, dict):
            raise ValueError("features")
        probs = obj.get("probabilities")
        if probs is not None and not all(isinstance(v, int | float) for v in probs):
            raise ValueError("probabilities")
        return obj

    class PydanticInference(pydantic.BaseModel):
        ts: float | str
        model_id: str
        request_id: str
        principal: str
        features: list[float] | dict[str, float | str | None]
        prediction: str | int | float
        model_version: str | None = None
        source_ip: str | None = None
        probabilities: list[float] | dict[str, float] | None = None
        latency_ms: float | None = None

    ways: dict[str, Callable[[bytes], Any]] = {
        "msgspec typed decode (mlwatchd)": lambda raw: decode_event(raw, "inference"),
        "orjson + per-field Python checks": naive,
        "pydantic model_validate_json": PydanticInference.model_validate_json,
    }
    rates = {}
    for name, func in ways.items():
        started = time.perf_counter()
        for raw in values:
            func(raw)
        rates[name] = n / (time.perf_counter() - started)
    return rates


def _restricted_config(config: str | None, only: list[str]) -> str:
    """A copy of ``config`` with only the detectors whose names start with ``only``."""
    import yaml

    from daemon.settings import default_config_path

    source = config or str(default_config_path())
    with open(source, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    detectors = data.get("detectors") or {}
    data["detectors"] = {name: cfg for name, cfg in detectors.items()
                         if any(name.startswith(prefix) for prefix in only)}
    if not data["detectors"]:
        raise SystemExit(f"no detector in {source} starts with {only}")
    with tempfile.NamedTemporaryFile("w", prefix="mlwatchd-bench-", suffix=".yaml",
                                     delete=False) as out:
        yaml.safe_dump(data, out)
    print(f"  detectors: {', '.join(sorted(data['detectors']))}")
    return out.name


def gc_pauses(n: int, quiet: bool, config: str | None = None) -> dict[str, float]:
    """GC pauses while ``n`` events are decoded and run through the configured detectors.

    Batches of 2,000 as the consumer loop hands them over; pauses timed by
    ``gc.callbacks``. ``quiet``: after building the pipeline, what ``mlwatchd
    run`` does after start-up (:func:`daemon.runtime.quiet_gc`).
    """
    import gc

    from daemon.runtime import quiet_gc
    from daemon.settings import load
    from detectors.events import decode_event
    from detectors.findings import Source
    from detectors.pipeline import Pipeline

    settings = load(config)
    pipeline = Pipeline(settings.detector_specs())
    values = sample_events(n)
    if quiet:
        quiet_gc()
    pauses: list[float] = []
    began = [0.0]

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - began[0])

    gc.callbacks.append(timer)
    started = time.perf_counter()
    try:
        for first in range(0, n, 2000):
            batch = values[first:first + 2000]
            pipeline.process_many("inference", 0, (
                (decode_event(raw, "inference"), Source(TOPIC, 0, first + i))
                for i, raw in enumerate(batch)))
    finally:
        gc.callbacks.remove(timer)
    elapsed = time.perf_counter() - started
    pauses.sort()
    return {"events_per_s": n / elapsed, "collections": len(pauses),
            "max_ms": 1000 * (pauses[-1] if pauses else 0.0),
            "p99_ms": 1000 * (pauses[int(0.99 * (len(pauses) - 1))] if pauses else 0.0),
            "total_ms": 1000 * sum(pauses)}


def _gc_bench(events: int, config: str | None) -> int:
    """``--gc``: each mode in a fresh interpreter (``gc.freeze`` cannot be undone fairly)."""
    print(f"mlwatchd bench --gc: {events:,} inference events, decode + detectors, batches of "
          f"2,000, {config or 'the default config'}")
    for quiet, name in ((False, "CPython defaults (700, 10, 10)"),
                        (True, "mlwatchd run (gc.freeze, gen0 50,000)")):
        code = ("import json, sys; from daemon.lab.bench import gc_pauses; "
                f"print(json.dumps(gc_pauses({events}, {quiet}, {config!r})))")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        r = orjson.loads(out)
        print(f"  {name:38s} pauses: max {r['max_ms']:6.1f} ms  p99 {r['p99_ms']:5.1f} ms  "
              f"total {r['total_ms']:7.0f} ms in {r['collections']:,} collections; "
              f"{r['events_per_s']:,.0f} events/s")
    return 0


def _median(runs: list[float]) -> str:
    shown = ", ".join(f"{r:,.0f}" for r in runs)
    return f"{statistics.median(runs):>10,.0f} events/s" + (f"  (runs: {shown})"
                                                           if len(runs) > 1 else "")


def run_bench(events: int = 300_000, decode_only: bool = False, config: str | None = None,
              only: list[str] | None = None, client: str = "kafka-python", runs: int = 1,
              gc_only: bool = False) -> int:
    if decode_only:
        for name, rate in decode_rates().items():
            print(f"{name:36s} {rate:>12,.0f} events/s  ({1e6 / rate:.2f} us/event)")
        return 0
    if gc_only:
        return _gc_bench(events, _restricted_config(config, only) if only else config)
    clients = ["kafka-python", "confluent"] if client == "both" else [client]
    print(f"mlwatchd bench: {events:,} inference events on {TOPIC} (1 partition); both consumers "
          f"subscribe to {', '.join(INPUTS)} with fetch_max_wait_ms={FETCH_MAX_WAIT_MS}")
    if only:
        config = _restricted_config(config, only)
    else:
        print(f"  detectors: those enabled in {config or 'the default config'}")
    values = sample_events(events)
    print(f"  mean event size {sum(map(len, values)) / len(values):.0f} bytes")
    with EmbeddedBroker() as broker:
        broker.create_topics([TOPIC, "ml.audit", "ml.access", "mlwatchd.findings",
                              "mlwatchd.dlq"], partitions=1)
        started = time.perf_counter()
        _produce(broker.bootstrap, values)
        print(f"  produced in {time.perf_counter() - started:.1f}s")
        # Runs alternate between the clients, so a load change on the machine
        # hits both alike; each run has its own consumer groups.
        bares: dict[str, list[float]] = {name: [] for name in clients}
        ours: dict[str, list[float]] = {name: [] for name in clients}
        rss: dict[str, float] = dict.fromkeys(clients, 0.0)
        for run in range(runs):
            for name in clients:
                bares[name].append(bare_consumer_rate(broker.bootstrap, events, name,
                                                      f"bench-bare-{name}-{run}"))
                rate, peak = mlwatchd_rate(broker.bootstrap, events, config, name,
                                           f"bench-mlwatchd-{name}-{run}")
                ours[name].append(rate)
                rss[name] = max(rss[name], peak)
    rates: dict[str, float] = {}
    for name in clients:
        bare, rates[name] = statistics.median(bares[name]), statistics.median(ours[name])
        print(f"  [{name}]")
        print(f"  (a) bare {name} + orjson : {_median(bares[name])}")
        print(f"  (b) mlwatchd run, kafka.client {name}: {_median(ours[name])} "
              f"(peak RSS {rss[name]:.0f} MiB)")
        ratio = rates[name] / bare
        print(f"  ratio (b)/(a) = {ratio:.2f}   target >= 0.60   "
              f"{'PASS' if ratio >= 0.6 else 'BELOW'}")
    if len(rates) == 2:
        gain = rates["confluent"] / rates["kafka-python"]
        print(f"  mlwatchd confluent / kafka-python = {gain:.2f}   target >= 2.00   "
              f"{'PASS' if gain >= 2 else 'BELOW'}")
    return 0
