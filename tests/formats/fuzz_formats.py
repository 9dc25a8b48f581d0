"""Fuzz every input format: random bytes and mutated fixture messages, never an exception.

Seeded and bounded in the suite (tests/formats/test_bounds.py); long on demand::

    python -m tests.formats.fuzz_formats --inputs 1000000

prints inputs per second and the dead-letter reasons seen, per format.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import time
from collections.abc import Iterator
from typing import Any

import msgspec

from daemon.formats import FORMATS, DeadLetter, Decoded, make_format

from .fixture_io import fixture_files, read_fixture

_TOKENS = [b"1e999", b"-1e999", b"{", b"}", b"[", b"]", b",", b":", b'"', b"null", b"1e309",
           b"-0", b"\xff",
           b'"Records"', b'"instances"', b'"inputs"', b'"shape"', b'"kind"', b'"EventList"',
           b'"items"', b'"detail-type"', b'"detail"', b"\x1f\x8b", b"9" * 40, b"[" * 300]


def corpus(name: str) -> list[tuple[bytes, list[tuple[str, bytes]], int | None]]:
    """The fixture messages of a format: the seeds that mutations start from."""
    seeds = []
    for path in fixture_files():
        if path.parent.name == name:
            for message in read_fixture(path)[1]:
                seeds.append((message.value, message.headers, message.timestamp_ms))
    return seeds


_ODD_VALUES: list[Any] = [None, True, -1, 0, 1e308, -1e308, 2**70, "", "x" * 5000,
                          "2026-13-99T99:99:99Z", "9999-12-31T23:59:59Z", [], {}, [[[[1]]]],
                          {"a": {"b": {"c": [1, "2", None]}}}, ["x"] * 50, [1.5] * 64]


def _mutate_json(node: Any, rng: random.Random, depth: int = 0) -> Any:
    """A copy of a JSON value with one random node replaced, dropped or duplicated."""
    if isinstance(node, dict) and node and depth < 12 and rng.random() < 0.8:
        key = rng.choice(list(node))
        out = dict(node)
        if rng.random() < 0.15:
            del out[key]
        else:
            out[key] = _mutate_json(node[key], rng, depth + 1)
        return out
    if isinstance(node, list) and node and depth < 12 and rng.random() < 0.8:
        i = rng.randrange(len(node))
        out_list = list(node)
        if rng.random() < 0.15:
            out_list.extend(out_list * rng.randrange(1, 4))
        else:
            out_list[i] = _mutate_json(node[i], rng, depth + 1)
        return out_list
    return rng.choice(_ODD_VALUES)


def mutations(
    rng: random.Random, seeds: list[tuple[bytes, list[tuple[str, bytes]], int | None]]
) -> Iterator[tuple[bytes, list[tuple[str, bytes]], int | None]]:
    while True:
        roll = rng.random()
        if roll < 0.2 or not seeds:
            yield rng.randbytes(rng.randrange(0, 256)), [], rng.choice([None, 0, 2**62])
            continue
        value, headers, ts = rng.choice(seeds)
        if roll < 0.6:
            try:
                tree = json.loads(value)
            except ValueError:
                tree = None
            if tree is not None:
                yield json.dumps(_mutate_json(tree, rng)).encode(), headers, ts
                continue
        data = bytearray(value)
        for _ in range(rng.randrange(1, 6)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[pos:pos + rng.randrange(1, 16)]
            elif op == 1:
                data[pos:pos] = rng.choice(_TOKENS)
            elif op == 2 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            else:
                data[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        if rng.random() < 0.3 and headers:
            headers = [(k, rng.choice([v, b"", rng.randbytes(8), v + b"x"])) for k, v in headers]
        yield bytes(data), headers, ts


def _all_finite(node: Any) -> bool:
    if isinstance(node, float):
        return math.isfinite(node)
    if isinstance(node, dict):
        return all(_all_finite(v) for v in node.values())
    if isinstance(node, list):
        return all(_all_finite(v) for v in node)
    return True


def fuzz(name: str, inputs: int, seed: int = 0) -> collections.Counter[str]:
    """Feed ``inputs`` fuzzed messages to one instance of format ``name``.

    Raises AssertionError if the format raises or returns anything but
    Decoded/DeadLetter items; returns the count of each outcome.
    """
    rng = random.Random(f"{name}:{seed}")
    fmt = make_format(name, {"training_buckets": ["ml-training-data"]}
                      if name == "cloudtrail" else {})
    seen: collections.Counter[str] = collections.Counter()
    gen = mutations(rng, corpus(name))
    for _ in range(inputs):
        value, headers, ts = next(gen)
        results = fmt.decode(value, headers, ts)
        assert isinstance(results, list)
        for r in results:
            assert isinstance(r, Decoded | DeadLetter), r
            if isinstance(r, Decoded):
                assert _all_finite(msgspec.to_builtins(r.event)), r.event
            seen["event" if isinstance(r, Decoded) else f"dead:{r.reason}"] += 1
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in sorted(FORMATS):
        start = time.perf_counter()
        seen = fuzz(name, args.inputs, args.seed)
        took = time.perf_counter() - start
        print(f"{name:11s} {args.inputs} inputs in {took:.1f} s ({args.inputs / took:,.0f}/s); "
              f"internal errors: {seen['dead:internal_error']}; {dict(seen.most_common(6))}")


if __name__ == "__main__":
    main()
