"""``mlwatchd eval --worlds N``: the detectors over many seeded worlds, in-process.

Each world (:mod:`daemon.lab.worlds`) is encoded to the wire form, decoded as
``replay`` decodes a file, and fed through a fresh detector pipeline in runs of
consecutive events of one kind (as the daemon's batches arrive). Findings are
scored with :func:`daemon.lab.evaluate.score` against the world's own scenarios:
same definitions as ``mlwatchd eval FILE`` (detected, false, side effects).
Rates are per million **benign** events (attack events excluded). A finding
that updates an open incident is not a new finding (counted apart, as
``updates``: see :func:`daemon.lab.evaluate.score`).

Seeds: the tuning worlds are 1..N-K; the K held-out worlds have seeds from
:data:`HELD_OUT_BASE` + 1 on, which no tuning run draws.

``partitions`` > 1 feeds the events as the daemon gets them from input topics
of that many partitions: each event in the partition Kafka's default
partitioner gives its key (the principal or actor, as ``simulate`` sends it),
each batch split by partition, so partition-scoped detectors run one instance
per partition and what their peers share across partitions is exercised.

``bootstrap_days`` K (``--bootstrap-days``) feeds the first K days of each
world learn-only, as ``replay --learn-until`` does (one mechanism:
:class:`daemon.replay.LearnOnly`), the daemon's baseline bootstrap on a first
start: the detectors learn, their findings are dropped and counted per
detector as *suppressed*, never as false or true, and those days' events are
in no judged total (``events``, benign events, rates are of the judged days).
A judged incident update that continues an incident opened on a learn-only
day is counted apart (``carried``): the daemon emits it as an update too.

Per world, the sample sizes each peer/population-calibrated detector's
thresholds rest on are gathered from :meth:`Detector.stats` (its
``calibration_*`` gauges; for reference-window detectors, the reference events
of its models), the largest over the detector's instances.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from daemon.lab.evaluate import EventInfo, Hit, Scorecard, score
from daemon.lab.scenarios import DAY, T0
from daemon.lab.simulate import encode
from daemon.lab.worlds import World, draw, world_events

__all__ = ["HELD_OUT_BASE", "WorldRow", "run_world", "run_worlds", "seeds"]

HELD_OUT_BASE: Final = 1_000_000
_SOURCE: Final = "world"
_BATCH: Final = 500


@dataclass
class WorldRow:
    seed: int
    group: str  # tuning | held-out
    victim: str
    stealth: bool
    days: int
    events: int
    benign_events: int
    attacks: list[str]
    detected: list[str]
    missed: list[str]
    false_findings: int
    side_effects: int
    seconds: float
    updates: int = 0  # incident updates emitted (not counted as findings)
    detectors: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> true/false/other
    false_by_role: dict[str, int] = field(default_factory=dict)  # "detector|role" -> count
    false_entities: dict[str, int] = field(default_factory=dict)  # "detector|entity" -> count
    #: detector -> calibration sample sizes (largest over its instances)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    partitions: int = 1
    #: learn-only days at the start (``--bootstrap-days``): their events are in
    #: ``learnt_events``, not in ``events``; their findings in ``suppressed``
    bootstrap_days: int = 0
    learnt_events: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    #: judged incident updates continuing an incident opened on a learn-only day
    carried_updates: int = 0

    @property
    def false_per_million(self) -> float:
        return self.false_findings * 1e6 / self.benign_events if self.benign_events else 0.0


def seeds(worlds: int, held_out: int) -> list[tuple[int, str]]:
    """(seed, group) of a suite of ``worlds`` worlds, ``held_out`` of them held out."""
    if worlds < 1 or not 0 <= held_out <= worlds:
        raise ValueError("need --worlds >= 1 and 0 <= --held-out <= --worlds")
    return ([(s, "tuning") for s in range(1, worlds - held_out + 1)]
            + [(HELD_OUT_BASE + k, "held-out") for k in range(1, held_out + 1)])


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the Java
    client and kafka-python do) among ``partitions``.

    >>> partition_of("21", 1000)  # murmur2("21") = -973932308 in Kafka's tests
    340
    >>> partition_of("alice", 1)
    0
    """
    if partitions <= 1:
        return 0
    from kafka.partitioner.default import murmur2

    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class Learnt:
    """What a world's learn-only days were (``--bootstrap-days``): not scored."""

    events: int = 0
    until: float | None = None  # event time the judged part starts
    #: detector -> findings dropped on the learn-only days
    suppressed: dict[str, int] = field(default_factory=dict)
    #: judged incident updates that continue an incident opened learn-only
    carried: int = 0


def _feed(pipeline: Any, world: World, partitions: int = 1, learn_until: float | None = None,
          ) -> tuple[list[EventInfo], list[Hit], Learnt]:
    """Feed ``world``; events before ``learn_until`` learn-only (as ``replay
    --learn-until``: findings dropped and counted). The infos and the hits'
    indices are of the judged events only."""
    from daemon.replay import LearnOnly, ReplayStats
    from detectors.events import decode_any
    from detectors.findings import Source

    gate = LearnOnly(learn_until)
    stats = ReplayStats()
    learnt = Learnt(until=learn_until)
    suppressed: Counter[str] = Counter()
    opened_learning: set[tuple[str, str, str]] = set()  # detector, entity type, id
    opened_live: set[tuple[str, str, str]] = set()
    infos: list[EventInfo] = []
    hits: list[Hit] = []
    chunk: list[tuple[int, str, Any, Any]] = []  # partition, kind, event, source
    where: dict[str, int] = {}
    learning = False

    def process(kind: str, partition: int, run: list[tuple[Any, Any]]) -> None:
        if learning:
            for f in gate.learn(pipeline, kind, partition, run, stats):
                suppressed[f.detector] += 1
                opened_learning.add((f.detector, f.entity.type, f.entity.id))
            return
        for f in pipeline.process_many(kind, partition, run):
            at = [s.offset for s in f.sources if s.topic == _SOURCE]
            index = (max(at) if at else int(run[-1][1].offset)) - learnt.events
            key = (f.detector, f.entity.type, f.entity.id)
            if not f.is_update:
                opened_live.add(key)
            elif key in opened_learning and key not in opened_live:
                learnt.carried += 1
            hits.append(Hit(index, f.detector, f.kind, f.entity.type, f.entity.id,
                            f.is_update))

    def flush() -> None:
        # One poll: each partition's records in order, in runs of one kind.
        for partition in sorted({c[0] for c in chunk}):
            run: list[tuple[Any, Any]] = []
            kind = ""
            for p, k, event, source in chunk:
                if p != partition:
                    continue
                if k != kind and run:
                    process(kind, partition, run)
                    run = []
                kind = k
                run.append((event, source))
            if run:
                process(kind, partition, run)
        chunk.clear()

    for i, e in enumerate(world.events):
        now_learning = gate.learning(e.ts)
        if now_learning != learning and chunk:
            flush()  # a run is all history or all judged
        learning = now_learning
        if learning:
            if e.scenario is not None:
                raise ValueError(f"world {world.spec.seed}: attack events on a learn-only "
                                 "day; use fewer --bootstrap-days than --days")
            learnt.events += 1
        event = decode_any(encode(e))  # the wire form, as replay reads it
        partition = where.get(e.key)
        if partition is None:
            partition = where[e.key] = partition_of(e.key, partitions)
        if partitions <= 1 and chunk and e.kind != chunk[-1][1]:
            flush()  # one partition: runs of one kind, as before
        chunk.append((partition, e.kind, event, Source(_SOURCE, partition, i)))
        if not learning:
            infos.append(EventInfo(e.ts, e.scenario, e.body.get("model_id")))
        if len(chunk) >= _BATCH:
            flush()
    flush()
    assert stats.learnt == learnt.events
    learnt.suppressed = dict(suppressed.most_common())
    return infos, hits, learnt


def calibration_sizes(pipeline: Any) -> dict[str, dict[str, float]]:
    """Detector name -> its calibration sample sizes, the largest over its instances."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    walk = getattr(pipeline, "detectors", None)
    for _, detector in walk() if callable(walk) else ():
        stats = detector.stats()
        sizes = {k.removeprefix("calibration_"): v for k, v in stats.items()
                 if k.startswith("calibration_")}
        if not sizes and stats.get("models_with_reference") and \
                hasattr(detector, "reference_size"):
            sizes = {"reference_events": float(detector.reference_size)}
        mine = out[detector.name]
        for k, v in sizes.items():
            mine[k] = max(mine.get(k, 0.0), float(v))
    return {k: v for k, v in sorted(out.items()) if v}


def run_world(seed: int, pipeline: Any, days: int | None = None, group: str = "tuning",
              scale: float = 1.0, partitions: int = 1,
              bootstrap_days: int = 0) -> tuple[WorldRow, Scorecard]:
    """Generate world ``seed``, run ``pipeline`` over it (fed from ``partitions``
    input partitions) and score it. The first ``bootstrap_days`` days are
    learn-only (the daemon's baseline bootstrap): not scored at all."""
    started = time.perf_counter()
    spec = draw(seed, days=days, scale=scale)
    if not 0 <= bootstrap_days < spec.days:
        raise ValueError(f"--bootstrap-days {bootstrap_days} must be less than the world's "
                         f"{spec.days} days (the last day is the attack day)")
    world = world_events(spec)
    infos, hits, learnt = _feed(pipeline, world, partitions,
                                T0 + bootstrap_days * DAY if bootstrap_days else None)
    card = score(infos, hits, world.scenarios)
    present = [r.scenario.name for r in card.scenarios]
    by_role: Counter[str] = Counter()
    by_entity: Counter[str] = Counter()
    for h in card.false_hits:
        role = world.roles.get(h.entity_id, "other")
        by_role[f"{h.detector}|{h.entity_type}:{role}"] += 1
        by_entity[f"{h.detector}|{h.entity_type}:{h.entity_id}"] += 1
    row = WorldRow(
        seed=seed, group=group, victim=world.spec.victim, stealth=world.spec.stealth,
        days=world.spec.days, events=card.events, benign_events=card.events - card.attack_events,
        attacks=present, detected=[r.scenario.name for r in card.scenarios if r.detected],
        missed=[r.scenario.name for r in card.scenarios if not r.detected],
        false_findings=card.false_findings, side_effects=card.side_effects,
        updates=card.updates, seconds=round(time.perf_counter() - started, 1),
        detectors={n: {"true": c.true, "false": c.false, "other": c.other,
                       "updates": c.updates}
                   for n, c in sorted(card.detectors.items())},
        false_by_role=dict(by_role.most_common()), false_entities=dict(by_entity.most_common()),
        calibration=calibration_sizes(pipeline), partitions=partitions,
        bootstrap_days=bootstrap_days, learnt_events=learnt.events,
        suppressed=learnt.suppressed, carried_updates=learnt.carried)
    return row, card


def _totals(rows: list[WorldRow]) -> dict[str, Any]:
    benign = sum(r.benign_events for r in rows)
    false = sum(r.false_findings for r in rows)
    detectors: dict[str, dict[str, float]] = {}
    for r in rows:
        for name, c in r.detectors.items():
            d = detectors.setdefault(name, {"true": 0, "false": 0, "other": 0, "updates": 0})
            for k in ("true", "false", "other", "updates"):
                d[k] += c.get(k, 0)
    for d in detectors.values():
        d["false_per_million"] = round(d["false"] * 1e6 / benign, 2) if benign else 0.0
    roles: Counter[str] = Counter()
    suppressed: Counter[str] = Counter()
    for r in rows:
        roles.update(r.false_by_role)
        suppressed.update(r.suppressed)
    return {
        "worlds": len(rows), "events": sum(r.events for r in rows), "benign_events": benign,
        "attacks": sum(len(r.attacks) for r in rows),
        "detected": sum(len(r.detected) for r in rows),
        "false_findings": false,
        "updates": sum(r.updates for r in rows),
        "false_per_million": round(false * 1e6 / benign, 2) if benign else 0.0,
        "seconds": round(sum(r.seconds for r in rows), 1),
        "missed": dict(Counter(m for r in rows for m in r.missed).most_common()),
        "detectors": dict(sorted(detectors.items())),
        "false_by_role": dict(roles.most_common()),
        "learnt_events": sum(r.learnt_events for r in rows),
        "suppressed": dict(suppressed.most_common()),
        "carried_updates": sum(r.carried_updates for r in rows),
    }


def _days(r: WorldRow) -> str:
    """A world's days: ``learn-only+judged`` with a bootstrap, else the days."""
    return f"{r.bootstrap_days}+{r.days - r.bootstrap_days}" if r.bootstrap_days else str(r.days)


def _table(title: str, rows: list[WorldRow], totals: dict[str, Any]) -> list[str]:
    lines = [f"{title}:",
             f"  {'seed':>8} {'victim':<10} {'pace':<7} {'days':>4} {'events':>9} "
             f"{'attacks':>9} {'false':>6} {'per M':>8} {'secs':>6}  missed"]
    for r in rows:
        lines.append(
            f"  {r.seed:>8} {r.victim:<10} {'stealth' if r.stealth else 'normal':<7} "
            f"{_days(r):>4} {r.events:>9,} {len(r.detected):>4}/{len(r.attacks):<4} "
            f"{r.false_findings:>6} {r.false_per_million:>8,.1f} {r.seconds:>6.1f}  "
            f"{', '.join(r.missed) or '-'}")
    lines.append(
        f"  {'total':>8} {'':<10} {'':<7} {'':>4} {totals['events']:>9,} "
        f"{totals['detected']:>4}/{totals['attacks']:<4} {totals['false_findings']:>6} "
        f"{totals['false_per_million']:>8,.1f} {totals['seconds']:>6.1f}")
    if totals["missed"]:
        lines.append("  missed by scenario: " + ", ".join(
            f"{k} {v}" for k, v in totals["missed"].items()))
    lines.append(f"  incident updates (not counted as findings): {totals['updates']:,}")
    if totals["learnt_events"]:
        suppressed = totals["suppressed"]
        lines.append(
            f"  learn-only days (not scored, not in the totals above): "
            f"{totals['learnt_events']:,} events learnt, {sum(suppressed.values()):,} findings "
            "suppressed" + (": " + ", ".join(f"{k} {v}" for k, v in suppressed.items())
                            if suppressed else ""))
        lines.append(f"  judged incident updates continuing a learn-only incident: "
                     f"{totals['carried_updates']:,}")
    lines.append(f"  per detector (false per million of {totals['benign_events']:,} benign "
                 "events):")
    for name, d in totals["detectors"].items():
        lines.append(f"    {name:<28} detecting {int(d['true']):>5}  false {int(d['false']):>6} "
                     f"({d['false_per_million']:>8,.1f}/M)  other {int(d['other']):>5}  "
                     f"updates {int(d['updates']):>5}")
    if totals["false_by_role"]:
        lines.append("  false findings by detector and entity:")
        for key, n in list(totals["false_by_role"].items())[:15]:
            lines.append(f"    {key:<60} {n:>6}")
    lines += _calibration_lines(rows)
    return lines


def _calibration_lines(rows: list[WorldRow]) -> list[str]:
    """Per detector, the sample sizes its thresholds were calibrated on, per world
    (one line per detector and size: one value if every world had it, else the
    values in the order of the table's worlds, '-' where the world had none)."""
    names = sorted({n for r in rows for n in r.calibration})
    if not names:
        return []
    parts = rows[0].partitions
    lines = ["  calibration sample sizes per world (largest instance of "
             f"{parts} partition{'s' if parts != 1 else ''}):"]
    for name in names:
        keys = sorted({k for r in rows for k in r.calibration.get(name, {})})
        for key in keys:
            values = [r.calibration.get(name, {}).get(key) for r in rows]
            shown = {v for v in values if v is not None}
            text = (f"{shown.pop():,.0f} in every world" if len(shown) == 1
                    and None not in values else
                    " ".join("-" if v is None else f"{v:,.0f}" for v in values))
            lines.append(f"    {name + ' ' + key:<58} {text}")
    return lines


def _header(worlds: int, held_out: int, days: int | None, bootstrap_days: int) -> str:
    """What was run, and what of it was learn-only.

    >>> print(_header(20, 4, 3, 1))
    worlds 20 (4 held out), 3 days each: day 1 learn-only (detectors learn, findings
      suppressed, not scored); judged: days 2-3
    >>> _header(2, 0, None, 0).endswith("no learn-only days (cold start), every day judged")
    True
    """
    each = f"{days} days each" if days is not None else "days as drawn per world"
    head = f"worlds {worlds} ({held_out} held out), {each}: "
    if not bootstrap_days:
        return head + "no learn-only days (cold start), every day judged"
    assert days is not None
    learn = "day 1" if bootstrap_days == 1 else f"days 1-{bootstrap_days}"
    judged = (f"day {days}" if bootstrap_days + 1 == days
              else f"days {bootstrap_days + 1}-{days}")
    return (head + f"{learn} learn-only (detectors learn, findings\n  suppressed, not scored); "
            f"judged: {judged}")


def run_worlds(make_pipeline: Callable[[], Any], worlds: int, held_out: int = 0,
               days: int | None = None, as_json: bool = False, scale: float = 1.0,
               out: Any = None, partitions: int = 1, bootstrap_days: int = 0) -> int:
    """Run the suite; print the tables (or JSON). A fresh pipeline per world.

    ``bootstrap_days``: the first days of each world are learn-only (see
    :func:`run_world`); needs ``days`` (more of them)."""
    if partitions < 1:
        raise ValueError("--partitions must be at least 1")
    if bootstrap_days < 0 or (bootstrap_days and (days is None or bootstrap_days >= days)):
        raise ValueError("--bootstrap-days needs --days, and fewer bootstrap days than days "
                         "(the last day is the attack day)")
    import orjson

    out = out if out is not None else sys.stdout
    rows: list[WorldRow] = []
    for seed, group in seeds(worlds, held_out):
        row, _card = run_world(seed, make_pipeline(), days=days, group=group, scale=scale,
                               partitions=partitions, bootstrap_days=bootstrap_days)
        rows.append(row)
        print(f"world {seed} ({group}, {row.victim}): {row.events:,} events judged"
              + (f" ({row.learnt_events:,} learnt, {sum(row.suppressed.values())} "
                 "suppressed)" if row.learnt_events else "")
              + f", {len(row.detected)}/{len(row.attacks)} attacks, {row.false_findings} "
              f"false, {row.seconds:.1f}s", file=sys.stderr, flush=True)
    groups = {g: [r for r in rows if r.group == g] for g in ("tuning", "held-out")}
    totals = {g: _totals(rs) for g, rs in groups.items() if rs}
    if as_json:
        doc = {"header": _header(worlds, held_out, days, bootstrap_days),
               "worlds": [{**asdict(r), "false_per_million": round(r.false_per_million, 2)}
                          for r in rows], "totals": totals}
        out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    lines = [_header(worlds, held_out, days, bootstrap_days)]
    for g, rs in groups.items():
        if rs:
            lines += _table(f"{g} worlds ({len(rs)})", rs, totals[g])
    out.write("\n".join(lines) + "\n")
    return 0
