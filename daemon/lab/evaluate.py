"""``mlwatchd eval``: run the detectors over a labelled stream and score them.

The stream is JSON Lines as ``mlwatchd simulate`` writes it: an attack event
carries its scenario's name in ``attributes.sim_scenario``. The detectors run
through the same :class:`~detectors.pipeline.Pipeline` as ``run`` and
``replay``. Definitions (all in event order, i.e. the file's line order):

- A scenario is **detected** by a finding about its entity (type and id) with
  one of its kinds, emitted at or after the scenario's first event. A finding
  about the entity of another kind marks it "other" (flagged, not detected).
- **Time to detect**: the scenario's events up to and including the one whose
  processing emitted the first detecting finding, and the event-time seconds
  from the scenario's first event to that event.
- **False findings**: findings about an entity no scenario targets, plus
  findings about a scenario's entity before that scenario began. Findings about
  a model after attack queries reached it are counted apart (side effects).
  Per million: false findings / events x 10^6.
- **Incidents**: a finding that updates an open incident (``incident.seq`` > 1,
  see detectors/incidents.py) is not a new finding: it is counted apart
  (``updates``), never as false, though it can detect a scenario (it went out,
  a responder sees it). A new incident after the quiet period counts as usual.
"""

from __future__ import annotations

import html
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from daemon.lab.simulate import ALL_SCENARIOS, LABEL, Progress, Scenario

__all__ = ["EventInfo", "Hit", "Scorecard", "evaluate_file", "format_scorecard",
           "print_findings_scorecard", "score"]


@dataclass(frozen=True)
class EventInfo:
    """What the scorecard needs of one event."""

    ts: float
    scenario: str | None = None
    model_id: str | None = None


@dataclass(frozen=True)
class Hit:
    """A finding, with the index of the event whose processing emitted it."""

    index: int
    detector: str
    kind: str
    entity_type: str
    entity_id: str
    #: An update of an open incident, not a new finding (not counted as false).
    update: bool = False


@dataclass
class ScenarioResult:
    scenario: Scenario
    events: int = 0
    first_index: int | None = None
    detected: bool = False
    other: bool = False
    detectors: list[str] = field(default_factory=list)
    events_to_detect: int | None = None
    seconds_to_detect: float | None = None


@dataclass
class DetectorCount:
    total: int = 0
    true: int = 0      # detecting a scenario
    false: int = 0     # about benign entities
    other: int = 0     # about attackers (other kind) or attacked models
    updates: int = 0   # updates of open incidents (not in total)


@dataclass
class Scorecard:
    events: int
    attack_events: int
    scenarios: list[ScenarioResult]
    false_findings: int
    side_effects: int
    detectors: dict[str, DetectorCount]
    unknown_labels: list[str]
    false_hits: list[Hit] = field(default_factory=list)  # the findings counted as false
    updates: int = 0  # incident updates emitted (not counted as findings)

    @property
    def false_per_million(self) -> float:
        return self.false_findings * 1e6 / self.events if self.events else 0.0

    @property
    def detected(self) -> int:
        return sum(r.detected for r in self.scenarios)


def score(events: Sequence[EventInfo], hits: Iterable[Hit],
          scenarios: Mapping[str, Scenario] = ALL_SCENARIOS) -> Scorecard:
    """The scorecard of ``hits`` over labelled ``events`` (pure arithmetic)."""
    results: dict[str, ScenarioResult] = {}
    unknown: set[str] = set()
    attacked_from: dict[str, int] = {}  # model id -> first attack event index
    attack_events = 0
    for i, e in enumerate(events):
        if e.scenario is None:
            continue
        attack_events += 1
        s = scenarios.get(e.scenario)
        if s is None:
            unknown.add(e.scenario)
            continue
        r = results.setdefault(e.scenario, ScenarioResult(s, first_index=i))
        r.events += 1
        if e.model_id is not None:
            attacked_from.setdefault(e.model_id, i)
    by_entity: dict[tuple[str, str], list[ScenarioResult]] = {}
    for r in results.values():
        by_entity.setdefault((r.scenario.entity_type, r.scenario.entity_id), []).append(r)

    counts: dict[str, DetectorCount] = {}
    false_hits: list[Hit] = []
    false = side = updates = 0
    for h in sorted(hits, key=lambda h: h.index):
        c = counts.setdefault(h.detector, DetectorCount())
        active = [r for r in by_entity.get((h.entity_type, h.entity_id), [])
                  if r.first_index is not None and h.index >= r.first_index]
        if h.update:
            updates += 1
            c.updates += 1
            active = [r for r in active if h.kind in r.scenario.kinds]
            if not active:
                continue  # an update is never a new false (or other) finding
        else:
            c.total += 1
        if active:
            matched = False
            for r in active:
                if h.kind in r.scenario.kinds:
                    matched = True
                    if not r.detected:
                        r.detected = True
                        first = r.first_index
                        assert first is not None
                        r.events_to_detect = sum(
                            1 for e in events[first:h.index + 1] if e.scenario == r.scenario.name)
                        r.seconds_to_detect = events[h.index].ts - events[first].ts
                    if h.detector not in r.detectors:
                        r.detectors.append(h.detector)
                else:
                    r.other = True
            if h.update:
                pass
            elif matched:
                c.true += 1
            else:
                c.other += 1
        elif h.entity_type == "model" and h.entity_id in attacked_from \
                and h.index >= attacked_from[h.entity_id]:
            side += 1
            c.other += 1
        else:
            false += 1
            c.false += 1
            false_hits.append(h)
    ordered = [results[n] for n in scenarios if n in results]
    return Scorecard(len(events), attack_events, ordered, false, side, counts, sorted(unknown),
                     false_hits, updates)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def format_scorecard(card: Scorecard) -> str:
    lines = [f"Scorecard: {card.events:,} events, {card.attack_events:,} attack events, "
             f"{len(card.scenarios)} scenarios; detected {card.detected} of "
             f"{len(card.scenarios)}."]
    lines.append(f"  {'scenario':<20} {'result':<9} {'events':>7} {'to detect':>18}  detectors")
    for r in card.scenarios:
        if r.detected:
            mark = "detected"
            ttd = f"{r.events_to_detect:,} ev / {_duration(r.seconds_to_detect or 0.0)}"
        else:
            mark, ttd = ("other" if r.other else "MISSED"), "-"
        lines.append(f"  {r.scenario.name:<20} {mark:<9} {r.events:>7,} {ttd:>18}  "
                     f"{', '.join(r.detectors) or '-'}")
    lines.append(f"False findings on benign entities: {card.false_findings} "
                 f"({card.false_per_million:,.1f} per million events); "
                 f"findings about attacked models (side effects): {card.side_effects}.")
    lines.append(f"Incident updates (repeats of open incidents, not counted as findings): "
                 f"{card.updates}.")
    lines.append("Findings per detector (total = detecting + false + other):")
    for name in sorted(card.detectors):
        c = card.detectors[name]
        lines.append(f"  {name:<28} {c.total:>5}  detecting {c.true:>4}  false {c.false:>4}  "
                     f"other {c.other:>4}")
    if not card.detectors:
        lines.append("  (no findings)")
    if card.unknown_labels:
        lines.append(f"Labels of no known scenario (not scored): {', '.join(card.unknown_labels)}")
    return "\n".join(lines)


@dataclass
class Run:
    """Everything an evaluation saw, for the scorecard and the HTML report."""

    events: list[EventInfo]
    hits: list[Hit]
    bad_lines: int


def evaluate_file(pipeline: Any, paths: Sequence[str | Path],
                  findings_out: IO[bytes] | None = None) -> Run:
    """Run ``pipeline`` over the files (as ``replay`` does), keeping labels and hit positions."""
    from daemon.replay import ReplayStats, read_events
    from detectors.events import event_type_of
    from detectors.findings import encode_finding

    lines = 0
    for p in paths:
        with open(p, "rb") as handle:
            lines += sum(1 for _ in handle)
    bar = Progress(lines, "evaluating")
    stats = ReplayStats()
    infos: list[EventInfo] = []
    hits: list[Hit] = []
    for event, source in read_events(paths, stats):
        attrs = event.attributes or {}
        label = attrs.get(LABEL)
        infos.append(EventInfo(float(event.ts), label if isinstance(label, str) else None,
                               getattr(event, "model_id", None)))
        index = len(infos) - 1
        for f in pipeline.process_many(event_type_of(event), 0, ((event, source),)):
            hits.append(Hit(index, f.detector, f.kind, f.entity.type, f.entity.id,
                            f.is_update))
            if findings_out is not None:
                findings_out.write(encode_finding(f) + b"\n")
        if index % 2000 == 0:
            bar.update(index)
    bar.update(lines)
    bar.close()
    return Run(infos, hits, stats.bad_lines)


def print_findings_scorecard(findings: Sequence[Mapping[str, Any]]) -> int:
    """The demo's short scorecard from findings alone (no event positions); caught count."""
    from daemon.lab.simulate import SCENARIOS

    print("Injected attacks (caught: a finding of the right kind about the attacker; other: "
          "flagged, but as another kind):", flush=True)
    caught = 0
    for s in SCENARIOS:
        about = [f for f in findings if f["entity"]["id"] == s.entity_id]
        hits = [f for f in about if f["kind"] in s.kinds]
        caught += bool(hits)
        if hits:
            mark, shown = "caught ", hits
        elif about:
            mark, shown = "other  ", about
        else:
            mark, shown = "MISSED ", []
        detectors = ", ".join(sorted({f"{f['detector']} ({f['kind']})" if not hits else
                                      f["detector"] for f in shown})) or "-"
        print(f"  {mark} {s.name:<20} {s.description}  [{detectors}]", flush=True)
    attack_entities = {s.entity_id for s in SCENARIOS}
    other = [f for f in findings if f["entity"]["id"] not in attack_entities]
    if other:
        print(f"Findings about entities no scenario targets: {len(other)} "
              "(models the attacks' queries went to count here too)", flush=True)
    return caught


def render_html(run: Run, card: Scorecard) -> str:
    """A self-contained HTML report: findings per detector over event time, scenario windows."""
    if not run.events:
        return "<!doctype html><title>mlwatchd eval</title><p>No events.</p>"
    t_lo = min(e.ts for e in run.events)
    t_hi = max(e.ts for e in run.events)
    span = max(t_hi - t_lo, 1.0)
    width, left, row_h = 1000, 220, 22
    detectors = sorted(card.detectors)
    height = 40 + row_h * max(1, len(detectors))

    def x(ts: float) -> float:
        return left + (width - left - 10) * (ts - t_lo) / span

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="11">']
    for r in card.scenarios:
        ts = [e.ts for e in run.events if e.scenario == r.scenario.name]
        x0, x1 = x(min(ts)), x(max(ts))
        colour = "#c8f0c8" if r.detected else "#f6c6c6"
        parts.append(f'<rect x="{x0:.1f}" y="20" width="{max(x1 - x0, 2):.1f}" '
                     f'height="{height - 20}" fill="{colour}" opacity="0.7">'
                     f'<title>{html.escape(r.scenario.name)}</title></rect>')
        parts.append(f'<text x="{x0:.1f}" y="14" transform="rotate(-20 {x0:.1f} 14)">'
                     f'{html.escape(r.scenario.name)}</text>')
    for i, name in enumerate(detectors):
        y = 30 + i * row_h
        parts.append(f'<text x="4" y="{y + 4}">{html.escape(name)}</text>')
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        for h in run.hits:
            if h.detector == name:
                colour = "#333"
                parts.append(f'<circle cx="{x(run.events[h.index].ts):.1f}" cy="{y}" r="3" '
                             f'fill="{colour}"><title>{html.escape(h.kind)} '
                             f'{html.escape(h.entity_type)}:{html.escape(h.entity_id)}'
                             '</title></circle>')
    parts.append("</svg>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mlwatchd eval</title>"
            "</head><body><h1>mlwatchd eval</h1>"
            "<p>Findings per detector over event time; scenario windows shaded "
            "(green: detected, red: missed).</p>" + "".join(parts)
            + "<pre>" + html.escape(format_scorecard(card)) + "</pre></body></html>")


def run_eval(pipeline: Any, files: list[str], html_out: str | None = None) -> int:
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        for p in missing:
            print(f"mlwatchd eval: no such file: {p}", file=sys.stderr)
        return 2
    run = evaluate_file(pipeline, files)
    card = score(run.events, run.hits)
    print(format_scorecard(card), flush=True)
    if run.bad_lines:
        print(f"Skipped {run.bad_lines} malformed lines.", flush=True)
    if not card.scenarios:
        print("No labelled events (attributes.sim_scenario): nothing to score against.",
              flush=True)
    if html_out:
        Path(html_out).write_text(render_html(run, card), encoding="utf-8")
        print(f"HTML report: {html_out}", flush=True)
    return 0


# -- through Kafka, against a running daemon ---------------------------------------


def _identity(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What names a simulated event whatever topic, partition or offset it landed on."""
    kind = body.get("event_type")
    if kind == "inference":
        return ("inference", body.get("request_id"))
    who = body.get("actor") if kind == "audit" else body.get("principal")
    return (kind, body.get("ts"), who, body.get("action"), body.get("resource"),
            body.get("outcome"))


def _events_of_files(paths: Sequence[str | Path]) -> tuple[list[EventInfo], dict[Any, int]]:
    infos: list[EventInfo] = []
    index: dict[Any, int] = {}
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                body = orjson.loads(line)
                label = (body.get("attributes") or {}).get(LABEL)
                ts = body.get("ts")
                infos.append(EventInfo(float(ts) if isinstance(ts, int | float) else 0.0,
                                       label if isinstance(label, str) else None,
                                       body.get("model_id")))
                index[_identity(body)] = len(infos) - 1
    return infos, index


def hits_from_kafka(settings: Any, paths: Sequence[str | Path],
                    idle_s: float = 3.0) -> tuple[list[EventInfo], list[Hit], int]:
    """Findings a running daemon wrote, matched to the simulated events they cite.

    Reads the findings topic from the start, fetches each finding's source
    messages from the input topics and matches them to the file's events by
    identity (request id; time, principal, action, resource for the others),
    so any partitioning and any earlier content of the topics work. Returns
    the events, the hits and how many findings cited no event of the files.
    """
    from kafka import TopicPartition

    from daemon.lab import clients

    infos, index = _events_of_files(paths)
    consumer = clients.reader(settings.kafka)
    findings: list[dict[str, Any]] = []
    try:
        topic = settings.topics.findings
        parts = consumer.partitions_for_topic(topic) or {0}
        consumer.assign([TopicPartition(topic, p) for p in parts])
        consumer.seek_to_beginning()
        quiet_until = time.monotonic() + idle_s
        while time.monotonic() < quiet_until:
            batch = consumer.poll(timeout_ms=200)
            for messages in batch.values():
                findings.extend(orjson.loads(m.value) for m in messages)
                quiet_until = time.monotonic() + idle_s
        cited: dict[tuple[str, int, int], int | None] = {}

        def event_at(topic: str, partition: int, offset: int) -> int | None:
            key = (topic, partition, offset)
            if key not in cited:
                tp = TopicPartition(topic, partition)
                consumer.assign([tp])
                consumer.seek(tp, offset)
                found = None
                for messages in consumer.poll(timeout_ms=5000, max_records=1).values():
                    for m in messages:
                        try:
                            found = index.get(_identity(orjson.loads(m.value)))
                        except orjson.JSONDecodeError:
                            found = None
                cited[key] = found
            return cited[key]

        hits: list[Hit] = []
        unmatched = 0
        for f in findings:
            positions = [event_at(s["topic"], s["partition"], s["offset"]) for s in f["sources"]]
            known = [p for p in positions if p is not None]
            if not known:
                unmatched += 1
                continue
            hits.append(Hit(max(known), f["detector"], f["kind"], f["entity"]["type"],
                            f["entity"]["id"]))
    finally:
        consumer.close()
    return infos, hits, unmatched


def run_eval_kafka(settings: Any, files: list[str]) -> int:
    """``mlwatchd eval --from-kafka``: score what a running daemon found."""
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        for p in missing:
            print(f"mlwatchd eval: no such file: {p}", file=sys.stderr)
        return 2
    infos, hits, unmatched = hits_from_kafka(settings, files)
    card = score(infos, hits)
    print(format_scorecard(card), flush=True)
    if unmatched:
        print(f"{unmatched} findings cite no event of the files (other traffic); not scored.",
              flush=True)
    return 0
