"""Fuzzer of the event decoder: seeded random and mutated inputs, outcome counts, slowest input.

Whoever writes the input topics may be the attacker: any bytes at all can
arrive. The decoder must answer every input with an event or a
:class:`~detectors.events.BadEvent`, quickly. This feeds it a seeded mix of

- structured events of the three kinds with hostile field values (integers
  of hundreds of digits, ``1e308``, year 9999 and year 1, nesting hundreds to
  100,000 deep, long and odd Unicode strings, wrong types, unknown fields);
- byte-level mutations of valid events (bit flips, insertions, deletions,
  truncation, splices of two inputs, repeated chunks);
- random JSON values and random bytes;

through both ``decode_event`` (topic-typed) and ``decode_any`` (files), and
prints the count per outcome, every uncaught exception, and the slowest input
(best of three timings, so that a scheduler pause is not blamed on the input).

    python tests/fuzz/fuzz_decoder.py                     # 100,000 inputs
    python tests/fuzz/fuzz_decoder.py --inputs 1000000 --seed 7

Exit status 1 if any input raised something other than BadEvent or took
longer than ``--max-ms``. The suite runs a seeded 20,000 (tests/fuzz/test_fuzz_decoder.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from detectors.events import BadEvent, decode_any, decode_event

__all__ = ["FuzzReport", "inputs", "main", "run"]

KINDS = ("inference", "audit", "access")


@dataclass
class FuzzReport:
    """What a run saw: outcome counts, uncaught exceptions, the slowest input."""

    inputs: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    #: (exception type and message, the input's first 200 bytes, its length)
    uncaught: list[tuple[str, bytes, int]] = field(default_factory=list)
    slowest_ms: float = 0.0
    slowest_input: bytes = b""
    seconds: float = 0.0

    def lines(self) -> Iterator[str]:
        yield f"inputs: {self.inputs} decoded twice each (decode_event, decode_any) " \
              f"in {self.seconds:.1f} s"
        for outcome, count in sorted(self.outcomes.items(), key=lambda kv: -kv[1]):
            yield f"  {outcome:32} {count}"
        yield f"uncaught exceptions: {len(self.uncaught)}"
        for what, head, size in self.uncaught[:20]:
            yield f"  {what[:120]}  input[{size} bytes]: {head[:80]!r}"
        yield f"slowest input: {self.slowest_ms:.3f} ms ({len(self.slowest_input)} bytes: " \
              f"{self.slowest_input[:60]!r})"


# -- hostile values ------------------------------------------------------------

def _digits(rng: random.Random) -> str:
    return rng.choice("123456789") + "".join(
        rng.choice("0123456789") for _ in range(rng.choice((19, 20, 40, 309, 400, 5000)) - 1))


def _odd_string(rng: random.Random) -> str:
    pick = rng.randrange(8)
    if pick == 0:
        return "x" * rng.choice((0, 1, 1000, 100_000))
    if pick == 1:
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 40))
                       ).encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if pick == 2:
        return rng.choice(["\u202e", "\u200b", "\x00", "\ufeff", "*bold*", "<!channel>",
                           "NaN", "Infinity", "-0", "1e400", "null", "true"])
    if pick == 3:
        return _ts_string(rng)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz._-:") for _ in range(rng.randrange(12)))


def _ts_string(rng: random.Random) -> str:
    year = rng.choice((1, 1969, 1970, 2026, 2099, 2100, 9999, rng.randrange(1, 10000)))
    offset = rng.choice(("Z", "+00:00", "+14:00", "-14:00", "", "+99:99", "+23:59"))
    frac = rng.choice(("", ".5", ".123456", "." + "9" * 30))
    return f"{year:04d}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}T" \
           f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}{frac}{offset}"


def _number_json(rng: random.Random) -> str:
    pick = rng.randrange(9)
    if pick == 0:
        return _digits(rng)
    if pick == 1:
        return "-" + _digits(rng)
    if pick == 2:
        return rng.choice(("1e308", "-1e308", "1e309", "1e-400", "5e-324",
                           "1.7976931348623157e308"))
    if pick == 3:
        return _digits(rng) + "." + _digits(rng)
    if pick == 4:
        return rng.choice(("NaN", "Infinity", "-Infinity", "0x10", "01", "1.", ".5", "+1"))
    if pick == 5:
        return str(rng.choice((0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**11, 10**13)))
    return repr(rng.uniform(-1e6, 4e12))


def _deep_json(rng: random.Random) -> str:
    depth = rng.choice((15, 16, 17, 100, 999, 1000, 1001, 5000, 100_000))
    if rng.random() < 0.5:
        return '{"a":' * depth + "1" + "}" * depth
    return "[" * depth + "]" * depth


def _value_json(rng: random.Random, depth: int = 0) -> str:
    """A random JSON value, hostile more often than not."""
    pick = rng.randrange(10 if depth < 4 else 6)
    if pick == 0:
        return _number_json(rng)
    if pick == 1:
        return orjson.dumps(_odd_string(rng)).decode()
    if pick == 2:
        return rng.choice(("null", "true", "false", "0", "1", '""', "[]", "{}"))
    if pick == 3:
        return _deep_json(rng) if rng.random() < 0.3 else str(rng.randrange(-5, 5))
    if pick in (4, 5):
        return repr(rng.random())
    if pick in (6, 7):
        items = [_value_json(rng, depth + 1) for _ in range(rng.randrange(4))]
        return "[" + ",".join(items) + "]"
    keys = [orjson.dumps(_odd_string(rng)).decode() for _ in range(rng.randrange(4))]
    return "{" + ",".join(f"{k}:{_value_json(rng, depth + 1)}" for k in keys) + "}"


def _valid(rng: random.Random, kind: str) -> dict[str, Any]:
    ts: Any = rng.choice((1_767_225_600 + rng.random() * 1e7, 1_767_225_600_000,
                          "2026-01-01T00:00:00Z", "2026-06-30T12:00:00.5+02:00"))
    base: dict[str, Any] = {"event_type": kind, "ts": ts}
    if kind == "inference":
        base.update(model_id="fraud", request_id=f"r{rng.randrange(10**6)}", principal="alice",
                    features=[rng.random() for _ in range(rng.randrange(1, 6))],
                    prediction=rng.choice((0, 1, "cat", 0.5)),
                    probabilities=[0.3, 0.7], label=1, latency_ms=3.5, source_ip="10.0.0.1")
    elif kind == "audit":
        base.update(actor="bob", action="dataset.read", resource="dataset:x",
                    outcome=rng.choice(("success", "failure", "denied")), bytes=1000, records=3)
    else:
        base.update(principal="carol", action="login", outcome="success", auth_method="sso",
                    geo={"country": "DE", "city": "Berlin", "lat": 52.5, "lon": 13.4})
    if rng.random() < 0.5:
        base["attributes"] = {"run_id": "r1", "n": 3, "nested": {"a": [1, 2, {"b": None}]}}
    return base


def _structured(rng: random.Random) -> bytes:
    """A valid event with one to three fields replaced by hostile JSON."""
    kind = rng.choice(KINDS)
    event = _valid(rng, kind)
    parts = {k: orjson.dumps(v).decode() for k, v in event.items()}
    names = [*parts, "attributes", "extra", "geo", "event_type"]
    for _ in range(rng.randrange(1, 4)):
        name = rng.choice(names)
        if rng.random() < 0.15:
            parts.pop(name, None)
        elif name == "ts" and rng.random() < 0.6:
            parts["ts"] = rng.choice((_number_json(rng), orjson.dumps(_ts_string(rng)).decode()))
        elif name == "attributes" and rng.random() < 0.5:
            parts["attributes"] = '{"x":' + _deep_json(rng) + "}"
        else:
            parts[name] = _value_json(rng)
    return ("{" + ",".join(f'"{k}":{v}' for k, v in parts.items()) + "}").encode()


def _mutated(rng: random.Random, seed_input: bytes, other: bytes) -> bytes:
    data = bytearray(seed_input)
    for _ in range(rng.randrange(1, 6)):
        if not data:
            data.extend(other[:10])
        pick = rng.randrange(7)
        i = rng.randrange(len(data) + 1)
        if pick == 0 and data:
            data[min(i, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif pick == 1:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif pick == 2:
            del data[i:i + rng.randrange(1, 16)]
        elif pick == 3:
            del data[i:]
        elif pick == 4:
            data[i:] = other[rng.randrange(len(other) + 1):]
        elif pick == 5:
            chunk = bytes(data[i:i + rng.randrange(1, 8)])
            data[i:i] = chunk * rng.choice((2, 10, 1000))
        else:
            data[i:i] = rng.choice((b'"', b"{", b"[", b"\\", b"\\u", b"\\ud800", b"\xff",
                                    b"\xc3", b"\x00", b"9" * 400, b",", b":"))
    return bytes(data)


def inputs(seed: int, count: int) -> Iterator[bytes]:
    """``count`` fuzz inputs, the same for the same seed."""
    rng = random.Random(seed)
    corpus: list[bytes] = [orjson.dumps(_valid(rng, k)) for k in KINDS]
    for _ in range(count):
        pick = rng.random()
        if pick < 0.40:
            raw = _structured(rng)
        elif pick < 0.85:
            raw = _mutated(rng, rng.choice(corpus), rng.choice(corpus))
        elif pick < 0.95:
            raw = _value_json(rng).encode()
        else:
            raw = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        if len(corpus) < 512 and len(raw) < 4096:
            corpus.append(raw)
        elif len(raw) < 4096 and rng.random() < 0.05:
            corpus[rng.randrange(len(corpus))] = raw
        yield raw


# -- the run ---------------------------------------------------------------------

def _outcome(decode: Callable[..., object], *args: Any) -> tuple[str, BaseException | None]:
    try:
        decode(*args)
    except BadEvent as exc:
        return f"bad:{exc.reason}", None
    except BaseException as exc:  # what the fuzzer is looking for
        return f"uncaught:{type(exc).__name__}", exc
    return "ok", None


def _time_ms(raw: bytes, kind: str) -> float:
    started = time.perf_counter()
    _outcome(decode_event, raw, kind)
    _outcome(decode_any, raw)
    return (time.perf_counter() - started) * 1000.0


def run(count: int, seed: int = 0, retime_over_ms: float = 5.0) -> FuzzReport:
    """Decode ``count`` seeded inputs with both decoders and report what happened.

    An input whose first timing exceeds ``retime_over_ms`` is timed twice more
    and keeps its fastest: on a shared machine a pause of the process is no
    property of the input.
    """
    report = FuzzReport()
    rng = random.Random(seed ^ 0x5EED)
    started = time.perf_counter()
    for raw in inputs(seed, count):
        kind = KINDS[rng.randrange(3)]
        t0 = time.perf_counter()
        for outcome, exc in (_outcome(decode_event, raw, kind), _outcome(decode_any, raw)):
            report.outcomes[outcome] += 1
            if exc is not None:
                report.uncaught.append((f"{type(exc).__name__}: {exc}", raw[:200], len(raw)))
        ms = (time.perf_counter() - t0) * 1000.0
        if ms > retime_over_ms:
            ms = min(ms, _time_ms(raw, kind), _time_ms(raw, kind))
        if ms > report.slowest_ms:
            report.slowest_ms, report.slowest_input = ms, raw
        report.inputs += 1
    report.seconds = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ms", type=float, default=50.0,
                        help="fail if an input takes longer (both decoders together)")
    args = parser.parse_args(argv)
    report = run(args.inputs, args.seed)
    for line in report.lines():
        print(line)
    ok = not report.uncaught and report.slowest_ms <= args.max_ms
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
