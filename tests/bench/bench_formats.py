"""Decoding cost of each input format: ``mlwatchd bench --formats`` (daemon/lab/bench_formats.py).

Run: ``python tests/bench/bench_formats.py [--messages N] [--repeat R]``, the same as
``mlwatchd bench --formats --events N --runs R``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from daemon.lab.bench_formats import run_format_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    raise SystemExit(run_format_bench(args.messages, args.repeat))


if __name__ == "__main__":
    main()
