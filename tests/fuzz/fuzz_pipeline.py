"""Pipeline fuzzer: every default detector against mutated events, a time limit per event.

Events are made as the wire would carry them (JSON bytes, decoded by
:func:`detectors.events.decode_event`; what the decoder refuses would be
dead-lettered and is only counted) from a benign stream of the three kinds,
then mutated: extreme, tiny, negative and out-of-range numbers, huge feature
dicts and lists, odd strings (megabyte, control, bidi and zero-width
characters, Slack markup), extreme timestamps (years 1 and 9999, time going
backwards, the seconds/milliseconds boundary) and floods of new principals.
Every detector of ``config/mlwatchd.yaml`` runs in one :class:`Pipeline`, one
event per call over four partitions, so per-event time is measured; caps on
principals are lowered (``--max-principals``) so that floods reach them.

Reports uncaught exceptions (what a detector raised, reported by the
pipeline's error path, and anything escaping the pipeline) and the slowest
events in CPU ms of the thread (the machine's load does not count; garbage
collection pauses are reported on their own, not charged to the event they
fell in) and wall ms. Seeded; exits 1 on any exception or an event over ``--limit-ms``.

    python tests/fuzz/fuzz_pipeline.py --events 40000 --seed 1

The suite runs a bounded seeded run (tests/unit/test_pipeline_fuzz.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from detectors.base import Detector  # noqa: E402 (after the path set-up when run as a script)
from detectors.events import BadEvent, Event, decode_event  # noqa: E402
from detectors.findings import Source  # noqa: E402
from detectors.pipeline import DetectorSpec, Pipeline  # noqa: E402
from detectors.registry import REGISTRY, params_model  # noqa: E402

T0 = 1_767_225_600.0
PARTITIONS = 4
MODELS = ("fraud", "churn", "img")
TOPICS = {"inference": "ml.inference", "audit": "ml.audit", "access": "ml.access"}

HUGE_NUMBERS: tuple[Any, ...] = (
    1e308, -1e308, 1.7976931348623157e308, 1e17, -1e17, 5e-324, -0.0, 0, 1e300, 2**63 - 1,
    -(2**63), 10**30, 1e16 + 1, 123456789012345678, -1,
)
#: Raw JSON number tokens json.dumps cannot write (overflowing to infinity).
RAW_NUMBERS = ("1e400", "-1e400", "1e-400", "123456789012345678901234567890")
ODD_STRINGS = (
    "", " ", "\u202eevil\u202c", "a\u200bb", "*bold* _it_ ~x~ `code`", "<!channel> <@U123>",
    "\x00\x01\x1f", "é" * 300, "x" * 100_000, "💥" * 500, "null", "NaN", "-Infinity",
    "../../etc/passwd", "'; DROP TABLE x; --", "\ud7ff", "1e308",
)
ODD_TS: tuple[Any, ...] = (
    "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+14:00", "1970-01-01T00:00:00Z", "2026-02-30T00:00:00Z",
    0, 1, 1e11, 1e11 + 1, 253402300799999, 253402300799, 1e15, 1e18, 9.99e17, 2**62,
    "2026-01-01T00:00:00.999999999+00:00",
)


@dataclass
class Report:
    events: int = 0
    decoded: int = 0
    rejected: int = 0
    findings: int = 0
    errors: list[str] = field(default_factory=list)
    slowest_cpu_ms: float = 0.0
    slowest_wall_ms: float = 0.0
    slowest_what: str = ""
    #: Longest garbage collection pause (CPU ms), not charged to the event it fell in.
    gc_pause_ms: float = 0.0
    over_limit: list[str] = field(default_factory=list)
    #: The slowest events: (CPU ms, wall ms, "#n kind/mutation").
    top: list[tuple[float, float, str]] = field(default_factory=list)
    mutations: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def ok(self) -> bool:
        return not self.errors and not self.over_limit


def default_specs(max_principals: int | None) -> list[DetectorSpec]:
    """The detectors of the shipped config, with ``max_principals`` lowered where they have it."""
    from daemon.settings import load  # tests may use daemon; detectors never do

    specs = load(ROOT / "config" / "mlwatchd.yaml").detector_specs()
    out = []
    for spec in specs:
        params = dict(spec.params)
        if max_principals and "max_principals" in params_model(REGISTRY[spec.name]).model_fields:
            params["max_principals"] = max_principals
        out.append(DetectorSpec(spec.name, params, spec.models))
    return out


class EventMaker:
    """Benign events of three kinds, as JSON objects; seeded."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.t = T0
        self.n = 0
        self.principals = [f"user-{i}" for i in range(40)] + ["svc-batch", "svc-api"]

    def next(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        self.t += rng.expovariate(1 / 0.5)
        self.n += 1
        who = rng.choice(self.principals)
        roll = rng.random()
        if roll < 0.6:
            model = MODELS[0] if rng.random() < 0.6 else rng.choice(MODELS)
            feats = [rng.gauss(0, 1) for _ in range(6)]
            p1 = 1 / (1 + 2.718281828 ** -(feats[0] + feats[1]))
            obj: dict[str, Any] = {
                "ts": self.t, "model_id": model, "model_version": "1",
                "request_id": f"r{self.n}", "principal": who,
                "features": feats if self.n % 2 else {f"f{j}": v for j, v in enumerate(feats)},
                "prediction": int(p1 > 0.5), "probabilities": [1 - p1, p1],
                "latency_ms": rng.uniform(1, 20), "source_ip": f"10.0.0.{rng.randint(1, 9)}",
            }
            if rng.random() < 0.2:
                obj["label"] = int(p1 > 0.5)
            return "inference", obj
        if roll < 0.8:
            return "audit", {
                "ts": self.t, "actor": who,
                "action": rng.choice(["dataset.read", "dataset.write", "model.download",
                                      "model.update", "role.assign", "dataset.delete"]),
                "resource": f"dataset:d{rng.randint(0, 5)}", "resource_type": "dataset",
                "outcome": "success" if rng.random() < 0.95 else "denied",
                "bytes": rng.randint(1000, 5_000_000), "records": rng.randint(1, 5000),
                "source_ip": "10.1.0.1",
            }
        return "access", {
            "ts": self.t, "principal": who, "action": rng.choice(["login", "token.use"]),
            "outcome": "success" if rng.random() < 0.9 else "failure",
            "source_ip": f"203.0.113.{rng.randint(1, 250)}", "auth_method": "sso",
            "geo": {"country": "DE", "city": "Berlin", "lat": 52.5, "lon": 13.4},
        }


def _number(rng: random.Random) -> Any:
    return rng.choice(HUGE_NUMBERS)


def mutate(rng: random.Random, kind: str, obj: dict[str, Any]) -> tuple[str, bytes]:
    """One mutation of ``obj``: its name and the JSON bytes to decode."""
    what = rng.choice((
        "number", "number", "features_huge", "features_dict_huge", "features_list_long",
        "string", "string", "ts", "ts", "ts_backwards", "raw_number", "missing", "wrong_type",
        "nested_attributes", "probabilities",
    ))
    fields = [k for k in obj if k != "ts"]
    if what == "number":
        numeric = [k for k, v in obj.items() if isinstance(v, int | float) and k != "ts"]
        if kind == "inference" and isinstance(obj["features"], list):
            obj["features"] = [_number(rng) if rng.random() < 0.5 else v for v in obj["features"]]
        elif kind == "inference":
            obj["features"] = {k: _number(rng) for k in obj["features"]}
        for key in rng.sample(numeric, min(2, len(numeric))):
            obj[key] = _number(rng)
        if kind == "access":
            obj["geo"] = {"lat": rng.choice((90, -90, 0)), "lon": rng.choice((180, -180))}
    elif what == "features_huge" and kind == "inference":
        obj["features"] = {**({} if isinstance(obj["features"], list) else obj["features"]),
                           f"extra{rng.randint(0, 3)}": rng.choice((1e17, -1e308, 1e308))}
    elif what == "features_dict_huge" and kind == "inference":
        obj["features"] = {f"k{i}": rng.random() for i in range(rng.choice((300, 3000)))}
    elif what == "features_list_long" and kind == "inference":
        obj["features"] = [rng.random() for _ in range(rng.choice((0, 1, 700, 5000)))]
    elif what == "string":
        for key in rng.sample(fields, min(2, len(fields))):
            if isinstance(obj[key], str):
                obj[key] = rng.choice(ODD_STRINGS)
        if kind == "inference" and rng.random() < 0.5:
            obj["features"] = {rng.choice(ODD_STRINGS): rng.choice(ODD_STRINGS)}
    elif what == "ts":
        obj["ts"] = rng.choice(ODD_TS)
    elif what == "ts_backwards":
        obj["ts"] = obj["ts"] - rng.choice((1e3, 1e6, 1e9))
    elif what == "raw_number":
        key = rng.choice(["ts", *(k for k, v in obj.items() if isinstance(v, int | float))])
        marker = "@@RAW@@"
        obj[key] = marker
        raw = json.dumps(obj).replace(f'"{marker}"', rng.choice(RAW_NUMBERS))
        return what, raw.encode()
    elif what == "missing" and fields:
        del obj[rng.choice(fields)]
    elif what == "wrong_type" and fields:
        obj[rng.choice(fields)] = rng.choice(([], {}, None, True, "x", 1.5))
    elif what == "nested_attributes":
        nested: Any = "x"
        for _ in range(rng.choice((10, 200))):
            nested = {"a": nested}
        obj["attributes"] = nested
    elif what == "probabilities" and kind == "inference":
        obj["probabilities"] = rng.choice(([], [1e308, -1e308], {"": 0.5}, [0.5] * 2000,
                                           [-1.0, 2.0]))
        obj.pop("confidence", None)
    return what, json.dumps(obj, allow_nan=False).encode()


def events(seed: int, n: int, mutate_rate: float = 0.2) -> Iterator[tuple[str, str, bytes]]:
    """(kind, mutation name or "benign"/"flood", raw JSON) x n, seeded."""
    rng = random.Random(seed)
    maker = EventMaker(rng)
    flood_left = 0
    flood_no = 0
    while n > 0:
        kind, obj = maker.next()
        if flood_left == 0 and rng.random() < 0.0002:
            flood_left = rng.choice((500, 2000))  # a burst of never-seen principals
        if flood_left:
            flood_left -= 1
            flood_no += 1
            who = f"flood-{seed}-{flood_no}"
            obj["actor" if kind == "audit" else "principal"] = who
            yield kind, "flood", json.dumps(obj).encode()
        elif rng.random() < mutate_rate:
            what, raw = mutate(rng, kind, obj)
            yield kind, what, raw
        else:
            yield kind, "benign", json.dumps(obj).encode()
        n -= 1


def _partition(event: Event) -> int:
    return zlib.crc32(event.subject.encode("utf-8", "surrogatepass")) % PARTITIONS


class PipelineFuzzer:
    """One pipeline of the default detectors, fed fuzzed events one at a time and timed."""

    def __init__(self, limit_ms: float = 50.0, max_principals: int | None = 1000,
                 top: int = 5, batch: int = 1) -> None:
        self.limit_ms = limit_ms
        self.top = top
        #: Events per poll: 1 times each event; more feeds polled runs per
        #: (kind, partition) as the daemon does, timed per poll (no per-event limit).
        self.batch = batch
        self.report = Report()
        self.pipeline = Pipeline(default_specs(max_principals), on_error=self._failed)
        self._spent: dict[str, float] = {}  # CPU seconds per detector in the current event
        self._timed: set[int] = set()
        self._gc_start = 0.0
        self._gc_total = 0.0  # CPU seconds of all collections so far

    def _failed(self, detector: Detector, event: Event | None, exc: Exception) -> None:
        self.report.errors.append(f"{detector.name}: {type(exc).__name__}: {str(exc)[:200]}")

    def _time(self, detector: Detector) -> None:
        inner, spent = detector.process_batch, self._spent

        def process_batch(items: Any, on_error: Any = None) -> Any:
            cpu0 = time.thread_time()
            try:
                return inner(items) if on_error is None else inner(items, on_error)
            finally:
                spent[detector.name] = spent.get(detector.name, 0.0) + time.thread_time() - cpu0

        detector.process_batch = process_batch  # type: ignore[method-assign]

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.thread_time()
            return
        pause = time.thread_time() - self._gc_start
        self._gc_total += pause
        self.report.gc_pause_ms = max(self.report.gc_pause_ms, pause * 1000)

    def run(self, seed: int, n: int) -> Report:
        gc.callbacks.append(self._gc)
        try:
            self._feed(seed, n)
        finally:
            gc.callbacks.remove(self._gc)
        return self.report

    def _feed(self, seed: int, n: int) -> None:
        report = self.report
        offsets: Counter[tuple[str, int]] = Counter()
        slow: list[tuple[float, float, str]] = []
        polled: dict[tuple[str, int], list[tuple[Event, Source]]] = {}
        waiting = 0
        started = time.perf_counter()
        for kind, what, raw in events(seed, n):
            report.events += 1
            report.mutations[what] += 1
            try:
                event = decode_event(raw, kind)
            except BadEvent:
                report.rejected += 1  # dead-lettered by the daemon
                continue
            report.decoded += 1
            partition = _partition(event)
            topic = TOPICS[kind]
            source = Source(topic, partition, offsets[topic, partition])
            offsets[topic, partition] += 1
            if self.batch > 1:
                polled.setdefault((kind, partition), []).append((event, source))
                waiting += 1
                if waiting >= self.batch:
                    self._poll(polled, slow, f"#{report.events} poll of {waiting}")
                    polled, waiting = {}, 0
                continue
            self._poll({(kind, partition): [(event, source)]}, slow,
                       f"#{report.events} {kind}/{what}")
        if polled:
            self._poll(polled, slow, f"#{report.events} poll of {waiting}")
        report.seconds = time.perf_counter() - started
        slow.sort(reverse=True)
        if slow:
            report.slowest_cpu_ms, report.slowest_wall_ms, report.slowest_what = slow[0]
        report.top = slow[:self.top]

    def _poll(self, polled: dict[tuple[str, int], list[tuple[Event, Source]]],
              slow: list[tuple[float, float, str]], label: str) -> None:
        """Feed one poll (runs per kind and partition), timed as one."""
        report, pipeline = self.report, self.pipeline
        for _, detector in pipeline.detectors():
            if id(detector) not in self._timed:  # new partition instances
                self._timed.add(id(detector))
                self._time(detector)
        self._spent.clear()
        gc0 = self._gc_total
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        for (kind, partition), run in polled.items():
            try:
                found = pipeline.process_many(kind, partition, run)
            except Exception as exc:  # escaped the pipeline: the consumer loop would die
                report.errors.append(f"pipeline: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            report.findings += len(found)
        cpu_ms = (time.thread_time() - cpu0 - (self._gc_total - gc0)) * 1000
        wall_ms = (time.perf_counter() - wall0) * 1000
        if self._spent:
            name, secs = max(self._spent.items(), key=lambda kv: kv[1])
            label += f" (mostly {name}: {secs * 1000:.1f} ms)"
        slow.append((cpu_ms, wall_ms, label))
        if len(slow) > 4 * self.top:
            slow.sort(reverse=True)
            del slow[self.top:]
        if cpu_ms > self.limit_ms and self.batch == 1:
            report.over_limit.append(f"{label}: {cpu_ms:.1f} ms")


def run(n: int, seed: int, limit_ms: float = 50.0, max_principals: int | None = 1000,
        top: int = 5, batch: int = 1) -> Report:
    """Feed ``n`` fuzzed events of ``seed`` to a new pipeline; the report."""
    return PipelineFuzzer(limit_ms, max_principals, top, batch).run(seed, n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--limit-ms", type=float, default=50.0, help="CPU ms allowed per event")
    parser.add_argument("--max-principals", type=int, default=1000,
                        help="cap on principals per detector (0: the config's own)")
    parser.add_argument("--batch", type=int, default=1,
                        help="events per poll (the daemon's max_poll_records is 2000); "
                             "above 1 polls are timed, not single events")
    args = parser.parse_args(argv)
    report = run(args.events, args.seed, args.limit_ms, args.max_principals or None,
                 batch=args.batch)
    print(f"events {report.events}  decoded {report.decoded}  rejected {report.rejected}  "
          f"findings {report.findings}  in {report.seconds:.1f} s "
          f"({report.seconds / max(report.events, 1) * 1e6:.0f} us/event)")
    print(f"uncaught exceptions {len(report.errors)}")
    for line, count in Counter(report.errors).most_common(20):
        print(f"  {count:6d} x {line}")
    unit = "event" if args.batch == 1 else "poll"
    limit = (f"over {args.limit_ms:g} ms CPU: {len(report.over_limit)}" if args.batch == 1
             else "no per-event limit in polls")
    print(f"slowest {unit}: {report.slowest_cpu_ms:.2f} ms CPU, {report.slowest_wall_ms:.2f} ms "
          f"wall ({report.slowest_what}); {limit}; longest GC pause "
          f"{report.gc_pause_ms:.1f} ms (not charged)")
    for cpu_ms, wall_ms, label in report.top:
        print(f"  {cpu_ms:8.2f} ms CPU {wall_ms:8.2f} ms wall  {label}")
    print("mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(report.mutations.items())))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
