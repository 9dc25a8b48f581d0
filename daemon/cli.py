"""The ``mlwatchd`` command: run, check-config, replay, detectors; the lab verbs demo,
simulate, eval, soak, bench are :mod:`daemon.cli_lab` (they need ``pip install
'mlwatchd[lab]'`` and import :mod:`daemon.lab` only when called)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from daemon.cli_lab import add_lab_verbs

__all__ = ["load_config", "main"]


def load_config(path: str | None) -> Any:
    """The settings, or exit 2 after one ``config error:`` line per problem."""
    from daemon.settings import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"config error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_run(args: argparse.Namespace) -> int:
    import threading

    # Handlers first: a SIGTERM during start-up must still end in a clean exit 0.
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    from daemon.logs import configure_logging
    from daemon.metrics import Metrics
    from daemon.response import build_response
    from daemon.runtime import Daemon, quiet_gc
    from daemon.settings import ConfigError
    from daemon.status_server import StatusPortInUse

    settings = load_config(args.config)
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    metrics = Metrics()
    try:
        response = build_response(settings, metrics)
    except ConfigError as exc:  # an unsafe state dir or outbox file
        for line in exc.problems:
            print(f"config error: {line}", file=sys.stderr)
        return 2
    from playbooks.state_files import UnsafeStateFile

    try:
        daemon = Daemon(settings, alerter=response, metrics=metrics, stopping=stopping)
    except UnsafeStateFile as exc:  # e.g. a planted checkpoint directory: one line, exit 2
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    quiet_gc()  # detectors are built: freeze them out of every GC pass
    try:
        return daemon.run()
    except StatusPortInUse as exc:  # a start-up problem like a config error: one line, exit 2
        print(f"mlwatchd: {exc.strerror}", file=sys.stderr)
        return 2


def cmd_check_config(args: argparse.Namespace) -> int:
    from playbooks.state_files import UnsafeStateFile, private_dir

    settings = load_config(args.config)
    if settings.state.dir:
        try:
            private_dir(settings.state.dir, create=False)
        except UnsafeStateFile as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
    names = ", ".join(s.name for s in settings.detector_specs()) or "none"
    slack = "webhook" if settings.slack.webhook_url else "bot token" if settings.slack.bot_token \
        else "off"
    routes = "off"
    if settings.playbooks.enabled:
        from playbooks.engine import playbook_warnings
        from playbooks.model import load_playbooks

        playbooks = load_playbooks(settings.playbooks.dir)  # validated by _load already
        routes = f"{len(playbooks.routes)} routes from {settings.playbooks.dir}"
        for line in playbook_warnings(playbooks, settings.playbooks,
                                      slack_configured=settings.slack.enabled):
            print(f"warning: playbooks: {line}", file=sys.stderr)
    inputs = ", ".join(topic if name == "contract" else f"{topic} ({name})"
                       for topic, (name, _) in settings.input_formats().items())
    print(f"config OK: kafka {settings.kafka.bootstrap_servers}, group {settings.kafka.group_id}, "
          f"inputs: {inputs}; detectors: {names}; slack: {slack}; playbooks: {routes}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from daemon.formats import FormatConfigError, make_format
    from daemon.logs import configure_logging
    from daemon.replay import main_replay
    from detectors.pipeline import Pipeline

    settings = load_config(args.config)
    configure_logging(settings.observability.log_level, settings.observability.log_format)
    # The format's options: those of the first input topic configured with it.
    options = next((dict(opts) for name, opts in settings.input_formats().values()
                    if name == args.format and name != "contract"), {})
    try:
        fmt = make_format(args.format,
                          {"max_bytes": settings.kafka.max_message_bytes, **options})
    except FormatConfigError as exc:
        for line in str(exc).splitlines():
            print(f"mlwatchd replay: {line}", file=sys.stderr)
        return 2
    return main_replay(Pipeline(settings.detector_specs()), args.files,
                       settings.kafka.max_message_bytes, fmt, args.kcat,
                       learn_until=args.learn_until,
                       bootstrap_s=args.bootstrap_s)


def _timestamp(text: str) -> float:
    """``1767225600`` or ``2026-01-01T00:00:00Z`` -> epoch seconds."""
    import datetime as dt

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a timestamp: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def cmd_detectors(args: argparse.Namespace) -> int:
    import inspect

    from detectors.registry import REGISTRY

    for name, cls in sorted(REGISTRY.items()):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"{name}  [{', '.join(sorted(cls.event_types))}; scope {cls.scope}]  {doc}")
        for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            print(f"    {param.name} = {param.default!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlwatchd",
        description="Security monitoring daemon for machine-learning systems.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help_text: str, func: Any, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if config:
            p.add_argument("--config", metavar="PATH",
                           help="YAML config (default: the shipped config/mlwatchd.yaml)")
        p.set_defaults(func=func)
        return p

    verb("run", "Run the daemon until SIGTERM/SIGINT, then drain, commit and exit 0.", cmd_run)
    verb("check-config", "Validate a config offline; one line per problem.", cmd_check_config)
    p = verb("replay", "Run the detectors over JSON Lines files; findings as JSON on stdout.",
             cmd_replay)
    p.add_argument("files", nargs="+", metavar="FILE.jsonl")
    p.add_argument("--format", default="contract", metavar="NAME",
                   help="input format of each line (default contract: one event with "
                        "event_type); options from the config's input.formats entry of "
                        "that format: contract, kserve, oip, litellm, cloudtrail, k8s-audit")
    p.add_argument("--kcat", action="store_true",
                   help="each line is a message as `kcat -C -J` prints it (payload, headers, ts)")
    learn = p.add_mutually_exclusive_group()
    learn.add_argument("--learn-until", type=_timestamp, metavar="TS",
                       help="learn-only before this event time (epoch seconds or ISO 8601): "
                       "detectors learn, findings are dropped and counted")
    learn.add_argument("--bootstrap-s", type=float, metavar="S",
                       help="learn-only for the first S seconds of event time (as the "
                       "daemon's bootstrap.history_s on a first start)")
    verb("detectors", "List the registered detectors and their params.", cmd_detectors,
         config=False)
    add_lab_verbs(verb)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
