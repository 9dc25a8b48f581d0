"""``mlwatchd soak``: proof under faults, on a real broker with real daemons.

One embedded Tansu broker (never restarted: it keeps data in memory only),
then:

1. **Input.** The labelled simulation of :mod:`daemon.lab.simulate`, scaled up to
   about ``events`` events (the attack scenarios included), merged in event
   time with a flood of ``flood_principals`` inference events each from a new
   principal, with ``poison`` malformed messages interleaved (not JSON, not an
   object, a missing field, a wrong type or value, larger than
   ``kafka.max_message_bytes``, empty). Keyed by principal/actor, as the wire
   contract says; the input topics are created with ``partitions`` each.
   Seeded: the same flags give the same messages at the same offsets.
2. **Clean run.** One ``mlwatchd run`` process, its own consumer group and
   findings/DLQ topics, no faults, until its committed offsets reach the end
   of every input partition.
3. **Faulty run.** ``replicas`` ``mlwatchd run`` processes in one group with
   a shared state store and the playbook engine posting to a fake Slack
   (:mod:`daemon.lab.fake_slack`); ``kills`` times a random replica gets
   ``kill -9`` and is restarted, one replica is added and one removed
   (SIGTERM) mid-run, and Slack answers 429 with ``Retry-After`` and 5xx for
   ``slack_fault_s`` seconds (switched on at a quarter of the input; the
   time counts from its first refused request). Ends when the committed
   offsets reach the end of every input partition and the response outbox
   has drained (or nothing moves for
   ``stall_s``: reported as a stall, also before every fault was injected).
4. **Report.** Events not processed, duplicate chat posts, finding ids of the
   faulty run against the clean run (by detector), DLQ count, peak memory per
   replica (VmHWM), wall times, rebalances. Non-zero exit when an invariant
   fails: unprocessed > 0, duplicate posts > 0, distinct DLQ offsets != poison.

Kills, the scale-out, the scale-in and the Slack fault are scheduled by
progress (committed share of the input), so they land mid-run whatever the
machine's speed.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from daemon.lab import clients
from daemon.lab.broker import EmbeddedBroker, free_port

__all__ = ["SoakOptions", "build_input", "main_soak", "run_soak"]

INPUTS: Final = {"inference": "ml.inference", "audit": "ml.audit", "access": "ml.access"}
#: Tansu answers a fetch only after fetch_max_wait_ms when a fetched partition
#: is empty. The group's session timeout is a flag (short: quick rebalances
#: after a kill -9); the heartbeat interval is a sixth of it.
_KAFKA_ENV: Final = {"MLWATCHD_KAFKA__FETCH_MAX_WAIT_MS": "20"}
#: Attack events of the simulation (fixed) and benign events per unit of scale,
#: measured on seed 7 over 8 days: events ~= 8,200 + 41,800 x scale.
_SIM_FIXED: Final = 8_200
_SIM_PER_SCALE: Final = 41_800
_FINDING_IN_TEXT: Final = re.compile(r"finding `([0-9a-f]{16,64})`")
#: Gauge of the model-stage events a replica holds for event-time alignment.
_HELD: Final = "mlwatchd_model_stage_buffered_events"
#: A run is over when, besides the input, the model stage's committed offsets
#: have not moved for this long and no replica holds events for alignment.
_MODEL_STAGE_QUIET_S: Final = 3.0
#: Model-stage events judged out of the aligned order (reported per run).
_ALIGNMENT_COUNTERS: Final = ("mlwatchd_model_stage_late_total",
                              "mlwatchd_model_stage_forced_total")


@dataclass
class SoakOptions:
    """Sizes and faults; the defaults are issue 8's numbers."""

    events: int = 1_000_000
    poison: int = 10_000
    flood_principals: int = 1_000_000
    replicas: int = 3
    kills: int = 20
    partitions: int = 6
    seed: int = 7
    days: int = 8
    #: Add one replica and remove one (SIGTERM) mid-run.
    scale_out: bool = True
    slack_fault_s: float = 180.0
    slack_fault_mode: str = "mixed"
    #: Share of the input committed when Slack starts failing.
    slack_fault_at: float = 0.25
    retry_after_s: float = 5.0
    state_store: str = "local"
    #: ``shared``: every replica uses state.dir's outbox (the daemon's default
    #: with a shared state dir); ``per-replica``: one outbox file per replica slot.
    outbox: str = "shared"
    max_message_bytes: int = 16_384
    session_timeout_ms: int = 6_000
    checkpoint_every_s: float | None = None
    memory_bound_mib: float = 2_048.0
    restart_delay_s: float = 1.0
    min_kill_gap_s: float = 3.0
    settle_s: float = 10.0
    #: Stop waiting when the committed offsets have not moved for this long
    #: after every fault was injected (reported as a stall).
    stall_s: float = 180.0
    timeout_s: float = 3_600.0
    config: str | None = None
    workdir: str | None = None
    clean: bool = True


# -- input -----------------------------------------------------------------------


@dataclass
class InputStats:
    simulated: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    attack_events: int = 0
    scenarios: int = 0
    flood: int = 0
    poison: int = 0
    poison_by_reason: dict[str, int] = field(default_factory=dict)
    total: int = 0
    scale: float = 0.0
    #: "topic:partition" -> end offset (next offset after the last message)
    end_offsets: dict[str, int] = field(default_factory=dict)
    produce_s: float = 0.0


def _sim_scale(events: int) -> float:
    return max(0.01, (events - _SIM_FIXED) / _SIM_PER_SCALE)


def _flood(count: int, start: float, end: float, seed: int) -> Iterator[tuple[float, str, str,
                                                                               bytes]]:
    """Inference events, each from a principal never seen before, spread over [start, end)."""
    rng = random.Random(seed)
    step = (end - start) / max(count, 1)
    weights = (1.6, -1.1, 0.8, 0.0, 0.5, -0.4, 0.0, 0.3)
    for i in range(count):
        ts = start + (i + rng.random()) * step
        who = f"flood-{i:07d}"
        x = [round(rng.gauss(0.0, 1.0), 4) for _ in weights]
        z = sum(w * v for w, v in zip(weights, x, strict=True))
        p1 = round(1.0 / (1.0 + math.exp(-z)), 4)
        body = {"event_type": "inference", "ts": round(ts, 3), "model_id": "fraud-scorer",
                "model_version": "3", "request_id": f"flood-{i:07d}", "principal": who,
                "features": x, "prediction": int(p1 >= 0.5),
                "probabilities": [round(1 - p1, 4), p1]}
        yield ts, "inference", who, orjson.dumps(body)


#: (reason expected in the DLQ, kind of topic, value builder from a key)
def _poison_kinds(limit: int) -> list[tuple[str, str, Any]]:
    def pad(key: str) -> bytes:
        body = {"ts": 1_793_577_600, "principal": key, "action": "login", "outcome": "success",
                "attributes": {"padding": "x" * (limit + 64)}}
        return orjson.dumps(body)

    return [
        ("not_json", "inference", lambda k: b'{"ts": 1793577600, "model_id": "fraud-sc'),
        ("not_json", "audit", lambda k: b"\xff\xfe not even utf-8"),
        ("not_an_object", "access", lambda k: b'["login", "success"]'),
        ("not_an_object", "inference", lambda k: b'"just a string"'),
        ("missing_field", "inference", lambda k: orjson.dumps(
            {"ts": 1_793_577_600, "model_id": "churn", "request_id": "r", "features": [1.0],
             "prediction": 1})),
        ("missing_field", "audit", lambda k: orjson.dumps(
            {"ts": 1_793_577_600, "action": "dataset.read", "resource": "dataset:x",
             "outcome": "success"})),
        ("wrong_type", "inference", lambda k: orjson.dumps(
            {"ts": 1_793_577_600, "model_id": "churn", "request_id": "r", "principal": k,
             "features": "oops", "prediction": 1})),
        ("wrong_type", "access", lambda k: orjson.dumps(
            {"ts": 1_793_577_600, "principal": 42, "action": "login", "outcome": "success"})),
        ("invalid_value", "access", lambda k: orjson.dumps(
            {"ts": 1_793_577_600, "principal": k, "action": "login", "outcome": "maybe"})),
        ("too_large", "access", pad),
        ("empty", "audit", lambda k: None),
    ]


def _check_poison(kinds: list[tuple[str, str, Any]], limit: int) -> dict[str, str]:
    """What the daemon's decoder says about each poison kind (it must refuse every one)."""
    from detectors.events import BadEvent, decode_event

    seen: dict[str, str] = {}
    for reason, kind, build in kinds:
        value = build("probe-principal")
        if value is None:
            got = "empty"
        elif len(value) > limit:
            decode_event(value, kind)  # a valid event: refused for its size alone
            got = "too_large"
        else:
            try:
                decode_event(value, kind)
            except BadEvent as exc:
                got = exc.reason
            else:
                raise AssertionError(f"poison {reason}/{kind} decodes as a valid event")
        seen[f"{reason}/{kind}"] = got
    return seen


def build_input(opts: SoakOptions) -> tuple[list[tuple[str, bytes | None, bytes | None]],
                                             InputStats]:
    """(topic, key, value) in produce order, and what they are. Deterministic per seed."""
    from daemon.lab.scenarios import DAY, T0
    from daemon.lab.simulate import encode, simulate

    stats = InputStats()
    stats.scale = _sim_scale(opts.events)
    sim, _notes = simulate(seed=opts.seed, days=opts.days, scale=stats.scale)
    stats.simulated = len(sim)
    stats.by_kind = dict(Counter(e.kind for e in sim))
    stats.attack_events = sum(e.scenario is not None for e in sim)
    stats.scenarios = len({e.scenario for e in sim if e.scenario is not None})
    stats.flood = opts.flood_principals
    sim_iter = ((e.ts, e.kind, e.key, encode(e)) for e in sim)
    flood = _flood(opts.flood_principals, T0, T0 + opts.days * DAY, opts.seed + 1)
    merged = heapq.merge(sim_iter, flood, key=lambda item: item[0])

    kinds = _poison_kinds(opts.max_message_bytes)
    observed = _check_poison(kinds, opts.max_message_bytes)
    rng = random.Random(opts.seed + 2)
    clean_total = stats.simulated + stats.flood
    slots = sorted(rng.sample(range(clean_total + opts.poison), opts.poison)) \
        if opts.poison else []
    out: list[tuple[str, bytes | None, bytes | None]] = []
    reasons: Counter[str] = Counter()
    last_key: dict[str, str] = {"inference": "app-01", "audit": "svc-etl", "access": "dana.r"}
    poison_at = iter(slots)
    next_poison = next(poison_at, -1)
    n_poison = 0
    for _ts, kind, key, value in merged:
        while len(out) == next_poison:
            reason, pkind, build = kinds[n_poison % len(kinds)]
            pkey = last_key[pkind]
            out.append((INPUTS[pkind], pkey.encode(), build(pkey)))
            reasons[observed[f"{reason}/{pkind}"]] += 1
            n_poison += 1
            next_poison = next(poison_at, -1)
        last_key[kind] = key
        out.append((INPUTS[kind], key.encode(), value))
    while n_poison < opts.poison:  # slots past the end of the stream
        reason, pkind, build = kinds[n_poison % len(kinds)]
        out.append((INPUTS[pkind], last_key[pkind].encode(), build(last_key[pkind])))
        reasons[observed[f"{reason}/{pkind}"]] += 1
        n_poison += 1
    stats.poison = n_poison
    stats.poison_by_reason = dict(sorted(reasons.items()))
    stats.total = len(out)
    return out, stats


def _produce(bootstrap: str, messages: list[tuple[str, bytes | None, bytes | None]],
             max_bytes: int) -> dict[str, int]:
    """Send everything; returns the end offset of every partition written to."""
    producer = clients.producer(bootstrap, max_request_size=max(1_048_576, 4 * max_bytes))
    ends: dict[str, int] = {}
    failures: list[BaseException] = []

    def done(meta: Any) -> None:
        name = f"{meta.topic}:{meta.partition}"
        if meta.offset + 1 > ends.get(name, 0):
            ends[name] = meta.offset + 1

    for topic, key, value in messages:
        producer.send(topic, key=key, value=value).add_callback(done).add_errback(
            failures.append)
    producer.flush()
    producer.close()
    if failures:
        raise RuntimeError(f"{len(failures)} input messages were not acknowledged: "
                           f"{failures[0]!r}")
    return ends


# -- processes -------------------------------------------------------------------


def _mlwatchd_cmd() -> list[str]:
    """The real console script next to this interpreter, else the same entry point."""
    script = Path(sys.executable).parent / "mlwatchd"
    if script.exists():
        return [str(script), "run"]
    return [sys.executable, "-m", "daemon.cli", "run"]


_ports_given: set[int] = set()


def _status_port() -> int:
    """A free port below the ephemeral range, never handed out twice in this process.

    ``free_port()`` returns an ephemeral port, which an outgoing Kafka
    connection may take before the daemon binds it (seen: "Address already in
    use" at start).
    """
    import socket

    low = 20_000 + random.randrange(5_000)
    for port in range(low, 32_000):
        if port in _ports_given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    return free_port()


def _hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _scrape(port: int) -> dict[str, float]:
    """A few counters from a replica's /metrics (empty when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if base in ("mlwatchd_events_consumed_total", "mlwatchd_dlq_messages_total",
                    "mlwatchd_findings_total", "mlwatchd_assigned_partitions", _HELD,
                    *_ALIGNMENT_COUNTERS):
            with contextlib.suppress(ValueError):
                out[base] = out.get(base, 0.0) + float(value)
    return out


@dataclass
class Incarnation:
    """One process of a replica slot."""

    slot: str
    number: int
    pid: int
    log: str
    port: int
    started: float
    ended: float | None = None
    how: str = ""  # killed | stopped | exited
    exit_code: int | None = None
    hwm_kib: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


class Replica:
    """A replica slot: ``mlwatchd run`` processes started, killed and restarted in turn."""

    def __init__(self, slot: str, env: Mapping[str, str], logdir: Path,
                 config: str | None) -> None:
        self.slot = slot
        self.env = dict(env)
        self.logdir = logdir
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives: list[Incarnation] = []
        self.restart_at: float | None = None
        self.retired = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def current(self) -> Incarnation:
        return self.lives[-1]

    def start(self) -> None:
        port = _status_port()
        number = len(self.lives) + 1
        log = self.logdir / f"{self.slot}.{number}.log"
        env = {**self.env, "MLWATCHD_OBSERVABILITY__HTTP_PORT": str(port)}
        cmd = _mlwatchd_cmd() + (["--config", self.config] if self.config else [])
        with open(log, "ab") as handle:
            self.proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=handle,
                                         stdin=subprocess.DEVNULL)
        self.lives.append(Incarnation(self.slot, number, self.proc.pid, str(log), port,
                                      time.time()))
        self.restart_at = None

    def sample(self, scrape: bool = False) -> None:
        if self.proc is None or not self.lives:
            return
        life = self.current
        if self.proc.poll() is None:
            hwm = _hwm_kib(self.proc.pid)
            if hwm is not None:
                life.hwm_kib = max(life.hwm_kib, hwm)
            if scrape:
                got = _scrape(life.port)
                if got:
                    life.metrics = got
        elif life.ended is None:
            life.ended, life.exit_code = time.time(), self.proc.returncode
            life.how = life.how or "exited"

    def kill(self) -> None:
        """kill -9 (after a last memory sample and metrics scrape)."""
        assert self.proc is not None
        self.sample(scrape=True)
        self.current.how = "killed"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.sample()

    def terminate(self) -> None:
        """SIGTERM: the daemon finishes its batch, commits and exits 0."""
        if self.alive:
            assert self.proc is not None
            self.sample(scrape=True)
            self.current.how = "stopped"
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> bool:
        """Wait for the current process to exit, sampling its memory; True if it did."""
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            self.sample()
            time.sleep(0.2)
        if self.alive:
            assert self.proc is not None
            self.current.how = "stopped, then killed after timeout"
            self.proc.kill()
            self.proc.wait()
            self.sample()
            return False
        self.sample()
        return True


def _base_env(bootstrap: str, group: str, findings: str, dlq: str,
              max_message_bytes: int, session_timeout_ms: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MLWATCHD_")}
    env.update(_KAFKA_ENV)
    env["MLWATCHD_KAFKA__SESSION_TIMEOUT_MS"] = str(session_timeout_ms)
    env["MLWATCHD_KAFKA__HEARTBEAT_INTERVAL_MS"] = str(max(100, session_timeout_ms // 6))
    env.update({
        "MLWATCHD_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "MLWATCHD_KAFKA__GROUP_ID": group,
        "MLWATCHD_KAFKA__MAX_MESSAGE_BYTES": str(max_message_bytes),
        "MLWATCHD_TOPICS__FINDINGS": findings,
        "MLWATCHD_TOPICS__DLQ": dlq,
        "MLWATCHD_OBSERVABILITY__LOG_LEVEL": "info",
        "MLWATCHD_OBSERVABILITY__LOG_FORMAT": "json",
    })
    return env


# -- Kafka views -----------------------------------------------------------------


def _committed(admin: Any, group: str) -> dict[str, int]:
    try:
        offsets = admin.list_group_offsets(group)
    except Exception:
        return {}
    table = offsets.get(group, offsets) if isinstance(offsets, dict) else {}
    return {f"{tp.topic}:{tp.partition}": int(meta.offset) for tp, meta in table.items()
            if meta is not None and meta.offset is not None and meta.offset >= 0}


def _unprocessed(ends: Mapping[str, int], committed: Mapping[str, int]) -> int:
    return sum(max(0, end - committed.get(name, 0)) for name, end in ends.items())


def _alignment(lives: list[Incarnation]) -> dict[str, int]:
    """Model-stage events released out of the aligned order, over every incarnation
    (as last scraped: a process killed between scrapes may have counted more)."""
    return {name.removeprefix("mlwatchd_model_stage_").removesuffix("_total"):
            int(sum(life.metrics.get(name, 0.0) for life in lives))
            for name in _ALIGNMENT_COUNTERS}


def _held(replicas: list[Replica]) -> int:
    """Events the live replicas' model stages still hold for alignment (scraped now);
    -1 while a live replica has not answered or holds no partition yet: one restarted
    after a kill may be about to restore a checkpoint that holds some."""
    held = 0
    for r in replicas:
        if r.alive and not r.retired:
            got = _scrape(r.current.port)
            if not got.get("mlwatchd_assigned_partitions"):
                return -1
            r.current.metrics = got
            held += int(got.get(_HELD, 0))
    return held


def _findings(bootstrap: str, topic: str) -> tuple[dict[str, str], int, dict[str, bytes]]:
    """finding id -> detector, the number of messages (re-emissions included), and
    finding id -> its message."""
    ids: dict[str, str] = {}
    raw: dict[str, bytes] = {}
    messages = clients.read_topic(bootstrap, topic)
    for message in messages:
        body = orjson.loads(message.value)
        ids[str(body["finding_id"])] = str(body["detector"])
        raw[str(body["finding_id"])] = message.value
    return ids, len(messages), raw


def _dead_letters(bootstrap: str, topic: str) -> dict[str, Any]:
    sources: set[tuple[str, str, str]] = set()
    reasons: Counter[str] = Counter()
    messages = clients.read_topic(bootstrap, topic)
    for message in messages:
        headers = {k: v.decode("utf-8", "replace") for k, v in (message.headers or [])}
        src = (headers.get("mlwatchd.source.topic", "?"),
               headers.get("mlwatchd.source.partition", "?"),
               headers.get("mlwatchd.source.offset", "?"))
        if src not in sources:
            sources.add(src)
            reasons[headers.get("mlwatchd.error.reason", "?")] += 1
    return {"messages": len(messages), "distinct_sources": len(sources),
            "by_reason": dict(sorted(reasons.items()))}


# -- outbox and Slack --------------------------------------------------------------


def _outbox_status(paths: list[Path]) -> dict[str, int]:
    """Job counts by status over the outbox files, plus ``due``: what still has to go out."""
    totals: Counter[str] = Counter()
    now = time.time()
    for path in paths:
        if not path.exists():
            continue
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                for status, count in db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY "
                                                "status"):
                    totals[str(status)] += int(count)
                due = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('pending', "
                                 "'running') AND NOT (phase = 'revert' AND next_at > ?)",
                                 (now,)).fetchone()[0]
                totals["due"] += int(due)
            finally:
                db.close()
        except sqlite3.Error:
            totals["unreadable"] += 1
    return dict(totals)


def _slack_posts(slack: Any) -> dict[str, Any]:
    """Delivered chat messages, and the same finding's same message delivered twice."""
    seen: Counter[tuple[str, str, str]] = Counter()
    no_id = 0
    statuses: Counter[int] = Counter()
    for request in slack.requests:
        statuses[request.status] += 1
    for request in slack.delivered:
        if request.endpoint != "chat.postMessage":
            continue
        body = request.body
        found = _FINDING_IN_TEXT.search(json.dumps(body.get("blocks") or [])
                                        .replace('\\"', '"'))
        if found is None:
            no_id += 1
            continue
        seen[(str(body.get("channel", "")), found.group(1), str(body.get("text", "")))] += 1
    dupes = {key: n for key, n in seen.items() if n > 1}
    return {
        "requests": sum(statuses.values()),
        "answers_by_status": {str(k): v for k, v in sorted(statuses.items())},
        "faults_answered": slack.faults_answered,
        "posts_delivered": sum(seen.values()) + no_id,
        "posts_without_finding_id": no_id,
        "distinct_findings_posted": len({key[1] for key in seen}),
        "duplicate_posts": sum(n - 1 for n in dupes.values()),
        "duplicate_examples": [{"channel": c, "finding_id": f, "text": t[:120], "times": n}
                               for (c, f, t), n in list(dupes.items())[:5]],
    }


def _posted_ids(slack: Any) -> set[str]:
    """Finding ids named in the chat messages ``slack`` accepted."""
    out: set[str] = set()
    for request in slack.delivered:
        if request.endpoint == "chat.postMessage":
            found = _FINDING_IN_TEXT.search(json.dumps(request.body.get("blocks") or [])
                                            .replace('\\"', '"'))
            if found is not None:
                out.add(found.group(1))
    return out


def _incident_keys(ids: set[str], raw: Mapping[str, bytes], playbooks: Any
                   ) -> dict[str, set[tuple[str, str]]]:
    """finding id -> the (route, dedup key) incidents it opens or counts in."""
    from detectors.findings import decode_finding
    from playbooks.actions import ActionCall

    out: dict[str, set[tuple[str, str]]] = {}
    for fid in ids:
        body = raw.get(fid)
        if body is None:
            continue
        finding = decode_finding(body)
        keys = out.setdefault(fid, set())
        for route in playbooks.matching(finding):
            call = ActionCall("alert", route.name, "", finding, "")
            keys.add((route.name, route.spec.dedup.key.render(call.context(None,
                                                                           outside=False))))
    return out


def _alerts(clean_posted: set[str], faulty_posted: set[str], clean_raw: Mapping[str, bytes],
            faulty_raw: Mapping[str, bytes], config: str | None) -> dict[str, Any]:
    """What the clean run alerted that the faulty one never did (and the reverse), by
    finding id and by incident (route and dedup key: which finding of an incident
    alerts first depends on arrival order, hence wall time, across partitions)."""
    from daemon.settings import load
    from playbooks.model import load_playbooks

    playbooks = load_playbooks(load(config).playbooks.dir)
    clean_keys = _incident_keys(clean_posted, clean_raw, playbooks)
    faulty_keys = _incident_keys(faulty_posted, faulty_raw, playbooks)
    clean_incidents = set().union(*clean_keys.values()) if clean_keys else set()
    faulty_incidents = set().union(*faulty_keys.values()) if faulty_keys else set()
    never = sorted(clean_posted - faulty_posted)
    missing = clean_incidents - faulty_incidents
    # Of those, the ones whose clean-run alert the faulty run found too (with
    # another severity, say): swallowed, not merely not found.
    swallowed = {key for fid, keys in clean_keys.items() if fid in faulty_raw
                 for key in keys & missing}
    return {
        "incidents_swallowed": len(swallowed),
        # Found by the faulty run too, and alerted only in the clean one: swallowed.
        "findings_swallowed": sum(fid in faulty_raw for fid in never),
        "clean_findings_alerted": len(clean_posted),
        "faulty_findings_alerted": len(faulty_posted),
        "findings_alerted_in_clean_never_in_faulty": len(never),
        "findings_alerted_in_faulty_not_in_clean": len(faulty_posted - clean_posted),
        "examples_never_in_faulty": never[:5],
        "clean_incidents_alerted": len(clean_incidents),
        "faulty_incidents_alerted": len(faulty_incidents),
        "incidents_alerted_in_clean_never_in_faulty": len(clean_incidents - faulty_incidents),
        "incidents_alerted_in_faulty_not_in_clean": len(faulty_incidents - clean_incidents),
        "incident_examples_never_in_faulty": [list(k) for k in
                                              sorted(clean_incidents - faulty_incidents)[:5]],
    }


# -- logs --------------------------------------------------------------------------


def _log_summary(lives: list[Incarnation]) -> dict[str, Any]:
    events: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    assigned_at: list[float] = []
    for life in lives:
        with contextlib.suppress(OSError), open(life.log, "rb") as handle:
            for raw in handle:
                try:
                    rec = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    if raw.startswith(b"Traceback"):
                        errors["traceback"] += 1
                    continue
                if not isinstance(rec, dict):
                    continue
                name = str(rec.get("event", ""))
                events[name] += 1
                if rec.get("level") in ("error", "critical"):
                    errors[name] += 1
                if name == "partitions_assigned":
                    assigned_at.append(_ts_of(rec) or life.started)
    rounds = 0
    last = -math.inf
    for at in sorted(assigned_at):
        if at - last > 2.0:
            rounds += 1
        last = at
    keys = ("partitions_assigned", "partitions_revoked", "checkpoint_restored",
            "commit_failed_rebalanced", "commit_failed", "produce_failed", "poll_failed",
            "dead_letter", "finding", "playbook_jobs_recovered", "action_retry",
            "action_failed", "playbook_actions_undelivered_at_stop")
    return {"rebalance_rounds": rounds, "events": {k: events.get(k, 0) for k in keys},
            "errors": dict(errors.most_common(10))}


def _ts_of(rec: Mapping[str, Any]) -> float | None:
    value = rec.get("timestamp")
    if isinstance(value, str):
        import datetime as _dt

        with contextlib.suppress(ValueError):
            return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


# -- the runs ----------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _clean_run(opts: SoakOptions, bootstrap: str, ends: Mapping[str, int], workdir: Path,
               admin: Any, slack: Any) -> dict[str, Any]:
    """One replica, no faults; its playbooks post to their own Slack (``slack``), with
    their own state dir and outbox: what the faulty run must alert too."""
    state_dir = workdir / "state-clean"
    env = _base_env(bootstrap, "soak-clean", "soak.findings.clean", "soak.dlq.clean",
                    opts.max_message_bytes, opts.session_timeout_ms)
    env.update({
        "MLWATCHD_STATE__DIR": str(state_dir),
        "MLWATCHD_SLACK__BOT_TOKEN": slack.token,
        "MLWATCHD_SLACK__CHANNEL": "#ml-security",
        "MLWATCHD_SLACK__API_BASE_URL": slack.api_base_url,
        "MLWATCHD_PLAYBOOKS__ACTIONS_TOPIC": "soak.actions.clean",
        "MLWATCHD_PLAYBOOKS__AUDIT_TOPIC": "soak.audit.clean",
    })
    if opts.state_store == "kafka":
        # The faulty run repartitions (the Kafka store's default): so does the clean
        # one, with a local store for its aligned model stage, or their model-scoped
        # findings would be compared across two routings.
        env.update({"MLWATCHD_STATE__MODEL_ROUTING": "repartition",
                    "MLWATCHD_TOPICS__REPARTITION": "soak.repartition.clean"})
    replica = Replica("clean", env, workdir, opts.config)
    started = time.monotonic()
    replica.start()
    try:
        return _clean_wait(opts, ends, admin, replica, started,
                           [state_dir / "mlwatchd-playbooks.sqlite3"])
    finally:
        if replica.alive and replica.proc is not None:
            replica.proc.kill()
            replica.proc.wait()


def _clean_wait(opts: SoakOptions, ends: Mapping[str, int], admin: Any, replica: Replica,
                started: float, outboxes: list[Path]) -> dict[str, Any]:
    total = sum(ends.values())
    deadline = started + opts.timeout_s
    last_note = 0.0
    left = total
    last_committed: dict[str, int] = {}
    moved_at = started
    while time.monotonic() < deadline:
        replica.sample(scrape=time.monotonic() - last_note > 2)
        if not replica.alive:
            raise RuntimeError(f"the clean replica exited early; see {replica.current.log}")
        committed = _committed(admin, "soak-clean")
        if committed != last_committed:
            last_committed, moved_at = committed, time.monotonic()
        left = _unprocessed(ends, committed)
        if left == 0 and time.monotonic() - moved_at >= _MODEL_STAGE_QUIET_S \
                and _held([replica]) == 0 and _outbox_status(outboxes).get("due", 0) == 0:
            break
        if time.monotonic() - last_note > 15:
            last_note = time.monotonic()
            _say(f"clean run: {total - left:,}/{total:,} committed")
        time.sleep(0.5)
    wall = time.monotonic() - started
    replica.terminate()
    replica.wait(60)
    life = replica.current
    return {"wall_s": round(wall, 1), "unprocessed": left, "model_stage": _alignment([life]),
            "peak_rss_mib": round(life.hwm_kib / 1024, 1),
            "events_consumed_metric": life.metrics.get("mlwatchd_events_consumed_total"),
            "outbox": _outbox_status(outboxes), "exit_code": life.exit_code, "log": life.log}


def _faulty_run(opts: SoakOptions, bootstrap: str, ends: Mapping[str, int], workdir: Path,
                admin: Any, slack: Any) -> dict[str, Any]:
    from kafka.admin import NewTopic

    group = "soak-faulty"
    rng = random.Random(opts.seed + 3)
    state_dir = workdir / "state"
    state_dir.mkdir(exist_ok=True)
    env = _base_env(bootstrap, group, "soak.findings.faulty", "soak.dlq.faulty",
                    opts.max_message_bytes, opts.session_timeout_ms)
    env.update({
        "MLWATCHD_STATE__DIR": str(state_dir),
        "MLWATCHD_SLACK__BOT_TOKEN": slack.token,
        "MLWATCHD_SLACK__CHANNEL": "#ml-security",
        "MLWATCHD_SLACK__API_BASE_URL": slack.api_base_url,
        "MLWATCHD_PLAYBOOKS__ACTIONS_TOPIC": "soak.actions",
        "MLWATCHD_PLAYBOOKS__AUDIT_TOPIC": "soak.audit",
    })
    if opts.checkpoint_every_s is not None:
        env["MLWATCHD_STATE__CHECKPOINT_EVERY_S"] = str(opts.checkpoint_every_s)
    if opts.state_store == "kafka":
        env.update({
            "MLWATCHD_STATE__STORE": "kafka",
            "MLWATCHD_STATE__SIGNING_KEY": os.urandom(24).hex(),
            "MLWATCHD_STATE__TOPIC": "soak.state.faulty",
            "MLWATCHD_TOPICS__REPARTITION": "soak.repartition.faulty",
        })
        with contextlib.suppress(Exception):
            admin.create_topics([NewTopic("soak.state.faulty", opts.partitions, 1,
                                          topic_configs={"cleanup.policy": "compact"})])
    #: slot -> its outbox file ("" for the one shared by every replica)
    outboxes: dict[str, Path] = {}

    def replica(slot: str) -> Replica:
        slot_env = dict(env)
        if opts.outbox == "per-replica":
            path = workdir / f"outbox-{slot}.sqlite3"
            slot_env["MLWATCHD_PLAYBOOKS__OUTBOX_PATH"] = str(path)
            # A removed replica's undelivered jobs are taken over by a live one.
            slot_env["MLWATCHD_PLAYBOOKS__ADOPT_OUTBOXES"] = "outbox-r*.sqlite3"
            outboxes[slot] = path
        elif not outboxes:
            outboxes[""] = state_dir / "mlwatchd-playbooks.sqlite3"
        return Replica(slot, slot_env, workdir, opts.config)

    slots = [replica(f"r{i + 1}") for i in range(opts.replicas)]
    try:
        return _chaos(opts, ends, admin, slack, group, rng, state_dir, slots, replica,
                      outboxes)
    finally:
        for r in slots:  # after an error or an interrupt: leave no daemon behind
            if r.alive and r.proc is not None:
                r.proc.kill()
                r.proc.wait()


def _chaos(opts: SoakOptions, ends: Mapping[str, int], admin: Any, slack: Any, group: str,
           rng: random.Random, state_dir: Path, slots: list[Replica], replica: Any,
           outboxes: dict[str, Path]) -> dict[str, Any]:
    total = sum(ends.values())
    kill_at = sorted(rng.uniform(0.05, 0.85) for _ in range(opts.kills))
    add_at, remove_at, fault_at = 0.35, 0.6, opts.slack_fault_at
    actions: list[dict[str, Any]] = []
    started = time.monotonic()
    for r in slots:
        r.start()
    deadline = started + opts.timeout_s
    best = 0.0
    last_kill = -math.inf
    last_change = started
    fault_started: float | None = None
    first_refusal: float | None = None
    fault_ended: float | None = None
    added = removed = not opts.scale_out
    done_since: float | None = None
    last_scrape = last_note = 0.0
    left = total
    outbox: dict[str, int] = {}
    timed_out = stalled = False
    last_committed: dict[str, int] = {}
    moved_at = started

    def log_action(what: str, **fields: Any) -> None:
        entry = {"t_s": round(time.monotonic() - started, 1), "progress": round(best, 3),
                 "action": what, **fields}
        actions.append(entry)
        _say(f"faulty run: {what} {fields} at {best:.0%}")

    while True:
        now = time.monotonic()
        if now > deadline:
            timed_out = True
            break
        scrape = now - last_scrape > 10.0
        if scrape:
            last_scrape = now
        for r in slots:
            r.sample(scrape=scrape)
            if not r.retired and not r.alive and r.restart_at is None:
                # Died on its own (not by us): restart it, and say so in the report.
                r.current.how = r.current.how or "exited"
                if r.current.how == "exited":
                    log_action("replica_exited_unexpectedly", slot=r.slot,
                               code=r.current.exit_code)
                r.restart_at = now + opts.restart_delay_s
            if r.restart_at is not None and now >= r.restart_at and not r.retired:
                r.start()
                last_change = now
                log_action("restart", slot=r.slot, incarnation=len(r.lives))
        committed = _committed(admin, group)
        left = _unprocessed(ends, committed)
        best = max(best, (total - left) / total if total else 1.0)
        if committed != last_committed:
            last_committed, moved_at = committed, now
        faults_done = not kill_at and added and removed and fault_ended is not None
        # Faults are scheduled by progress: with none (seen: every member of the
        # group waiting in JoinGroup for minutes on the embedded broker after a
        # kill -9 mid-rebalance) the remaining ones never come; stop and say so.
        if left > 0 and now - max(moved_at, last_change) > opts.stall_s:
            stalled = True
            log_action("stalled", unprocessed=left, seconds=opts.stall_s,
                       faults_done=faults_done)
            break
        live = [r for r in slots if r.alive and not r.retired]
        if kill_at and best >= kill_at[0] and now - last_kill >= opts.min_kill_gap_s and live:
            victim = rng.choice(live)
            victim.kill()
            victim.restart_at = now + opts.restart_delay_s * (0.5 + rng.random())
            kill_at.pop(0)
            last_kill = last_change = now
            log_action("kill -9", slot=victim.slot, pid=victim.current.pid)
        if not added and best >= add_at:
            extra = replica(f"r{len(slots) + 1}")
            slots.append(extra)
            extra.start()
            added, last_change = True, now
            log_action("add replica", slot=extra.slot)
        # Alive now: a replica just killed above waits for its restart and is
        # not the one removed (removing it would cancel that restart).
        live = [r for r in slots if r.alive and not r.retired and r.restart_at is None]
        if not removed and best >= remove_at and len(live) > 1:
            leaving = rng.choice([r for r in live if r.slot != "r1"] or live)
            leaving.retired = True
            leaving.terminate()
            leaving.wait(60)
            removed, last_change = True, now
            log_action("remove replica (SIGTERM)", slot=leaving.slot,
                       exit_code=leaving.current.exit_code)
        # Slack fails from a quarter of the input on, until slack_fault_s after
        # it refused its first request: the daemons post mostly in bursts (the
        # attack day comes last), so the outage is timed from when it bites.
        if fault_started is None and best >= fault_at:
            slack.set_fault(opts.slack_fault_mode, retry_after=opts.retry_after_s)
            fault_started = now
            log_action("slack fault on", mode=opts.slack_fault_mode,
                       seconds=opts.slack_fault_s)
        if fault_started is not None and first_refusal is None and slack.faults_answered:
            first_refusal = now
            log_action("slack refused its first request")
        if fault_started is not None and fault_ended is None and (
                (first_refusal is not None and now - first_refusal >= opts.slack_fault_s)
                or (first_refusal is None and left == 0 and outbox.get("due", 0) == 0
                    and now - fault_started >= opts.slack_fault_s)):
            slack.set_fault(None)
            fault_ended = now
            log_action("slack fault off", answered=slack.faults_answered)
        # What a removed replica left in its own outbox is delivered by nobody: it
        # is not waited for (reported as stranded below).
        retired = {r.slot for r in slots if r.retired}
        outbox = _outbox_status([p for slot, p in outboxes.items() if slot not in retired])
        finished = (left == 0 and faults_done and outbox.get("due", 0) == 0
                    and all(r.alive or r.retired for r in slots)
                    and now - last_change >= opts.settle_s
                    and now - moved_at >= _MODEL_STAGE_QUIET_S and _held(slots) == 0)
        if finished:
            done_since = done_since or now
            if now - done_since >= 2.0:
                break
        else:
            done_since = None
        if now - last_note > 15:
            last_note = now
            _say(f"faulty run: {total - left:,}/{total:,} committed, "
                 f"{sum(r.alive for r in slots)} replicas up, kills left {len(kill_at)}, "
                 f"outbox due {outbox.get('due', 0)}")
        time.sleep(0.5)
    wall = time.monotonic() - started
    if fault_ended is None:
        slack.set_fault(None)
    for r in slots:
        r.terminate()
    for r in slots:
        r.wait(90)
    final_committed = _committed(admin, group)
    lagging = {name: {"committed": final_committed.get(name, 0), "end": end,
                      "checkpoint": _checkpoint_offset(state_dir, group, name)}
               for name, end in ends.items() if final_committed.get(name, 0) < end}
    lives = [life for r in slots for life in r.lives]
    per_slot = {}
    for r in slots:
        per_slot[r.slot] = {
            "incarnations": len(r.lives),
            "peak_rss_mib": round(max((life.hwm_kib for life in r.lives), default=0) / 1024, 1),
            "ends": [life.how for life in r.lives],
        }
    consumed = sum(life.metrics.get("mlwatchd_events_consumed_total", 0.0) for life in lives)
    return {
        "model_stage": _alignment(lives),
        "wall_s": round(wall, 1),
        "timed_out": timed_out,
        "stalled": stalled,
        "lagging_partitions": lagging,
        "unprocessed": _unprocessed(ends, final_committed),
        "unprocessed_at_stop_decision": left,
        "events_consumed_metric": int(consumed),
        "replicas": per_slot,
        "actions": actions,
        "kills_done": sum(a["action"] == "kill -9" for a in actions),
        "outbox": _outbox_status(list(outboxes.values())),
        "outbox_files": [str(p) for p in outboxes.values()],
        # Jobs still due in the outbox of a replica that was removed and never came
        # back: alerts nobody will deliver.
        "outbox_stranded": _outbox_status([p for slot, p in outboxes.items()
                                           if slot in {r.slot for r in slots if r.retired}]
                                          ).get("due", 0),
        "logs": _log_summary(lives),
        "exit_codes": [life.exit_code for life in lives],
    }


def _checkpoint_offset(state_dir: Path, group: str, name: str) -> int | None:
    """The offset the local state store's checkpoint of ``name``'s partition reflects."""
    try:
        from daemon.state import LocalStateStore

        topic, partition = name.rsplit(":", 1)
        checkpoint = LocalStateStore(state_dir, group).load(int(partition))
        return None if checkpoint is None else checkpoint.offsets.get(topic)
    except Exception:
        return None


def run_soak(opts: SoakOptions) -> dict[str, Any]:
    """Everything above; returns the report (see :func:`main_soak` for printing)."""
    from daemon.lab.fake_slack import FakeSlack

    if opts.replicas < 2 and opts.scale_out:
        raise ValueError("the scale-in needs at least 2 replicas (or --no-scale-out)")
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="mlwatchd-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"options": asdict(opts), "workdir": str(workdir)}
    wall_started = time.monotonic()
    _say(f"workdir {workdir}; building input")
    started = time.monotonic()
    messages, stats = build_input(opts)
    _say(f"input: {stats.total:,} messages ({stats.simulated:,} simulated, {stats.flood:,} "
         f"flood, {stats.poison:,} poison) built in {time.monotonic() - started:.0f}s")
    broker = EmbeddedBroker(log_path=str(workdir / "broker.log"))
    broker.start()
    try:
        admin = clients.admin(broker.bootstrap)
        clients.create_topics(broker.bootstrap, [(t, opts.partitions) for t in INPUTS.values()])
        clients.create_topics(broker.bootstrap, [(t, 3) for t in (
            "soak.findings.clean", "soak.dlq.clean", "soak.findings.faulty", "soak.dlq.faulty",
            "soak.actions", "soak.audit", "soak.actions.clean", "soak.audit.clean")])
        started = time.monotonic()
        stats.end_offsets = _produce(broker.bootstrap, messages, opts.max_message_bytes)
        stats.produce_s = round(time.monotonic() - started, 1)
        del messages
        produced = sum(stats.end_offsets.values())
        _say(f"produced {produced:,} messages in {stats.produce_s}s to {broker.bootstrap}")
        if produced != stats.total:
            raise RuntimeError(f"end offsets sum to {produced}, expected {stats.total}")
        for name in (f"{t}:{p}" for t in INPUTS.values() for p in range(opts.partitions)):
            stats.end_offsets.setdefault(name, 0)
        report["input"] = asdict(stats)
        clean_posted: set[str] = set()
        if opts.clean:
            _say("clean run: 1 replica, no faults")
            with FakeSlack() as clean_slack:
                report["clean"] = _clean_run(opts, broker.bootstrap, stats.end_offsets,
                                             workdir, admin, clean_slack)
                report["clean"]["slack"] = _slack_posts(clean_slack)
                clean_posted = _posted_ids(clean_slack)
            _say(f"clean run done in {report['clean']['wall_s']}s")
        with FakeSlack() as slack:
            _say(f"faulty run: {opts.replicas} replicas, {opts.kills} kills, slack at "
                 f"{slack.api_base_url}")
            report["faulty"] = _faulty_run(opts, broker.bootstrap, stats.end_offsets, workdir,
                                           admin, slack)
            report["slack"] = _slack_posts(slack)
            faulty_posted = _posted_ids(slack)
        _say("reading findings and dead letters")
        faulty_ids, faulty_msgs, faulty_raw = _findings(broker.bootstrap,
                                                        "soak.findings.faulty")
        report["faulty"]["findings"] = {"distinct": len(faulty_ids), "messages": faulty_msgs}
        report["dlq"] = _dead_letters(broker.bootstrap, "soak.dlq.faulty")
        if opts.clean:
            clean_ids, clean_msgs, clean_raw = _findings(broker.bootstrap,
                                                         "soak.findings.clean")
            report["clean"]["findings"] = {"distinct": len(clean_ids), "messages": clean_msgs}
            report["clean"]["dlq"] = _dead_letters(broker.bootstrap, "soak.dlq.clean")
            report["compare"] = _compare(clean_ids, faulty_ids)
            report["compare"]["severity_differs"] = _severity_diffs(clean_raw, faulty_raw)
            report["alerts"] = _alerts(clean_posted, faulty_posted, clean_raw, faulty_raw,
                                       opts.config)
        admin.close()
    finally:
        broker.stop()
    report["wall_s"] = round(time.monotonic() - wall_started, 1)
    report["invariants"] = _invariants(report, opts)
    with open(workdir / "report.json", "w") as handle:
        json.dump(report, handle, indent=2, default=str)
    return report


def _compare(clean: Mapping[str, str], faulty: Mapping[str, str]) -> dict[str, Any]:
    only_clean = set(clean) - set(faulty)
    only_faulty = set(faulty) - set(clean)
    detectors = sorted(set(clean.values()) | set(faulty.values()))
    by_detector = {}
    for name in detectors:
        row = {"clean": sum(d == name for d in clean.values()),
               "faulty": sum(d == name for d in faulty.values()),
               "only_clean": sum(clean[i] == name for i in only_clean),
               "only_faulty": sum(faulty[i] == name for i in only_faulty)}
        by_detector[name] = row
    return {"identical": not only_clean and not only_faulty, "clean": len(clean),
            "faulty": len(faulty), "common": len(set(clean) & set(faulty)),
            "only_clean": len(only_clean), "only_faulty": len(only_faulty),
            "by_detector": by_detector}


def _severity_diffs(clean: Mapping[str, bytes], faulty: Mapping[str, bytes]
                    ) -> dict[str, Any]:
    """Findings with the same id in both runs but another severity (the id does not
    cover it; playbook routes match on it, so another route may run)."""
    diffs: list[dict[str, str]] = []
    for fid in sorted(set(clean) & set(faulty)):
        a, b = orjson.loads(clean[fid]), orjson.loads(faulty[fid])
        if a.get("severity") != b.get("severity"):
            diffs.append({"finding_id": fid, "detector": str(a.get("detector")),
                          "clean": str(a.get("severity")), "faulty": str(b.get("severity"))})
    return {"count": len(diffs), "examples": diffs[:5]}


def _invariants(report: Mapping[str, Any], opts: SoakOptions) -> dict[str, Any]:
    faulty = report.get("faulty", {})
    peak = max((s["peak_rss_mib"] for s in faulty.get("replicas", {}).values()), default=0.0)
    checks = {
        "unprocessed == 0": faulty.get("unprocessed", -1) == 0 and not faulty.get("timed_out"),
        "duplicate posts == 0": report.get("slack", {}).get("duplicate_posts", -1) == 0,
        "DLQ distinct == poison": report.get("dlq", {}).get("distinct_sources")
        == report["input"]["poison"],
        "kills done": faulty.get("kills_done", -1) == opts.kills,
        "alerts stranded in a removed replica's outbox == 0":
            faulty.get("outbox_stranded", -1) == 0,
    }
    alerts = report.get("alerts")
    if alerts is not None:
        # A finding the faulty run did not find at all is in "compare" (model-scoped
        # findings differ with state.store local): counted, but only the findings
        # both runs found, and the incidents, must alert in both.
        checks["incidents alerted in the clean run only, their finding found by both == 0"] = (
            alerts["incidents_swallowed"] == 0)
        checks["findings of both runs alerted in the clean run only == 0"] = (
            alerts["findings_swallowed"] == 0)
        checks["clean run alerted"] = alerts["clean_findings_alerted"] > 0
    informational = {
        "finding ids identical to the clean run": report.get("compare", {}).get("identical"),
        "same severity for every common finding id":
            report.get("compare", {}).get("severity_differs", {}).get("count") == 0,
        "findings alerted in the clean run, never in the faulty one == 0":
            (alerts or {}).get("findings_alerted_in_clean_never_in_faulty") == 0,
        "incidents alerted in the clean run, never in the faulty one == 0":
            (alerts or {}).get("incidents_alerted_in_clean_never_in_faulty") == 0,
        f"peak RSS <= {opts.memory_bound_mib:g} MiB": peak <= opts.memory_bound_mib,
    }
    return {"ok": all(checks.values()), "checks": checks, "informational": informational}


# -- printing -----------------------------------------------------------------------


def _print_report(r: Mapping[str, Any]) -> None:
    inp, faulty = r["input"], r["faulty"]
    out = print
    out("mlwatchd soak report")
    out(f"  input: {inp['total']:,} messages = {inp['simulated']:,} simulated "
        f"(scale {inp['scale']:.2f}, {inp['attack_events']:,} attack events in "
        f"{inp['scenarios']} scenarios) + {inp['flood']:,} flood principals + "
        f"{inp['poison']:,} poison {inp['poison_by_reason']}; produced in {inp['produce_s']}s")
    if "clean" in r:
        c = r["clean"]
        out(f"  clean run: 1 replica, {c['wall_s']}s, {c['findings']['distinct']:,} findings, "
            f"DLQ {c['dlq']['distinct_sources']:,}, peak RSS {c['peak_rss_mib']} MiB")
    out(f"  faulty run: {faulty['wall_s']}s{' (TIMED OUT)' if faulty['timed_out'] else ''}, "
        f"session timeout {r['options']['session_timeout_ms']} ms, "
        f"kills {faulty['kills_done']}, rebalance rounds {faulty['logs']['rebalance_rounds']} "
        f"(assignments logged {faulty['logs']['events']['partitions_assigned']}, checkpoints "
        f"restored {faulty['logs']['events']['checkpoint_restored']})")
    if faulty.get("stalled"):
        out(f"  STALLED: committed offsets did not move for {r['options']['stall_s']:g}s")
    for name, row in faulty.get("lagging_partitions", {}).items():
        out(f"    not committed to the end: {name} committed {row['committed']:,}, end "
            f"{row['end']:,}, state checkpoint at {row['checkpoint']}")
    out(f"  events not processed (end offsets - committed): {faulty['unprocessed']:,}; "
        f"events consumed per replica metrics (redeliveries included, killed replicas as "
        f"last scraped): {faulty['events_consumed_metric']:,}")
    s = r["slack"]
    out(f"  slack: {s['requests']:,} requests {s['answers_by_status']}, "
        f"{s['posts_delivered']:,} posts delivered about {s['distinct_findings_posted']:,} "
        f"findings; duplicate posts: {s['duplicate_posts']}")
    out(f"  outbox at the end: {faulty['outbox']}; due in removed replicas' outboxes "
        f"(nobody delivers them): {faulty['outbox_stranded']}")
    d = r["dlq"]
    out(f"  DLQ: {d['distinct_sources']:,} distinct source offsets ({d['messages']:,} "
        f"messages) {d['by_reason']}")
    if "compare" in r:
        cmp_ = r["compare"]
        out(f"  finding ids vs clean: {'IDENTICAL' if cmp_['identical'] else 'DIFFERENT'} "
            f"(clean {cmp_['clean']:,}, faulty {cmp_['faulty']:,}, only in clean "
            f"{cmp_['only_clean']:,}, only in faulty {cmp_['only_faulty']:,})")
        a = r["alerts"]
        out(f"  alerts: clean run {a['clean_findings_alerted']:,} findings "
            f"({a['clean_incidents_alerted']:,} incidents), faulty run "
            f"{a['faulty_findings_alerted']:,} ({a['faulty_incidents_alerted']:,}); alerted "
            f"in the clean run and never in the faulty one: "
            f"{a['findings_alerted_in_clean_never_in_faulty']} findings "
            f"({a['findings_swallowed']} of them found by the faulty run), "
            f"{a['incidents_alerted_in_clean_never_in_faulty']} incidents")
        out(f"  model stage out of aligned order (late, forced): faulty "
            f"{faulty.get('model_stage', {})}, clean {r['clean'].get('model_stage', {})}")
        for name, row in cmp_["by_detector"].items():
            flag = "" if not row["only_clean"] and not row["only_faulty"] else "  <--"
            out(f"    {name:28s} clean {row['clean']:>6,} faulty {row['faulty']:>6,} "
                f"only-clean {row['only_clean']:>5,} only-faulty {row['only_faulty']:>5,}{flag}")
    out("  peak memory (VmHWM) per replica slot, max over its processes:")
    for slot, row in faulty["replicas"].items():
        out(f"    {slot}: {row['peak_rss_mib']} MiB over {row['incarnations']} process(es): "
            f"{', '.join(row['ends'])}")
    if faulty["logs"]["errors"]:
        out(f"  error log lines: {faulty['logs']['errors']}")
    out(f"  wall time: {r['wall_s']}s; logs and report.json in {r['workdir']}")
    inv = r["invariants"]
    for name, ok in {**inv["checks"], **inv["informational"]}.items():
        out(f"  [{'PASS' if ok else 'FAIL'}] {name}"
            f"{'' if name in inv['checks'] else ' (reported, not an exit condition)'}")


def main_soak(opts: SoakOptions, as_json: bool = False) -> int:
    """``mlwatchd soak``: run, print, exit 0 when every invariant holds, else 1."""
    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)  # clean up the broker and daemons on SIGTERM
    report = run_soak(opts)
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report)
    return 0 if report["invariants"]["ok"] else 1
