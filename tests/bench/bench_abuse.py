"""Per-query cost and memory of the inference-abuse detectors.

Run: ``python tests/bench/bench_abuse.py [--dims 64] [--principals 1000]
[--history 10000 1000000] [--dict] [--poll 2000]``.

A synthetic natural stream (10 class clusters in ``--dims`` dimensions, class
probabilities, ``--principals`` callers at a steady pace) is generated in
chunks outside the timed region. Two measurements:

1. each detector alone, per event, over ``--alone`` events after 10k events of
   history;
2. at every history size of ``--history`` (all detectors fed the same
   history): the whole family in pipeline order over the next ``--window``
   events (what the daemon does: every detector sees every event, so the
   vector detectors share one list-to-array conversion per batch), then each
   detector alone over another ``--window`` events.

Events are fed as the daemon feeds them: ``process_batch`` over polled runs of
``--poll`` events (the default config's ``max_poll_records``); ``--poll 1``
calls ``process`` per event instead.

Times are CPU time of this process (``time.process_time``) so other work on a
shared machine inflates them less; the best of ``--repeat`` passes for (1).
Memory per principal: pickled size of the per-principal table divided by the
principals it holds, and the model-level index of Blacklight in total.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from detectors.abuse import DETECTORS
from detectors.events import InferenceEvent
from detectors.findings import Source

T0 = 1_767_225_600.0


class Stream:
    """Natural-looking inference traffic, made in chunks of pre-built events."""

    def __init__(self, dims: int, principals: int, as_dict: bool, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.normal(0, 3, (10, dims))
        self.dims = dims
        self.principals = [f"user-{i}" for i in range(principals)]
        self.as_dict = as_dict
        self.names = [f"f{i}" for i in range(dims)]
        self.n = 0

    def chunk(self, size: int) -> list[tuple[InferenceEvent, Source]]:
        rng = self.rng
        cls = rng.integers(0, 10, size)
        x = self.centres[cls] + rng.normal(0, 1.5, (size, self.dims))
        logits = -((x[:, None, :] - self.centres[None]) ** 2).sum(-1) / 40.0
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        who = rng.integers(0, len(self.principals), size)
        rows = np.round(x, 4).tolist()
        probs = np.round(p, 5).tolist()
        out = []
        for i in range(size):
            n = self.n + i
            feats = dict(zip(self.names, rows[i], strict=True)) if self.as_dict else rows[i]
            ev = InferenceEvent(
                ts=T0 + n * 0.01,
                model_id="bench",
                request_id=f"r{n}",
                principal=self.principals[who[i]],
                features=feats,
                prediction=int(p[i].argmax()),
                probabilities=probs[i],
            )
            out.append((ev, Source("ml.inference", 0, n)))
        self.n += size
        return out


def feed(det, items, poll: int) -> None:
    """``items`` through ``det`` as the pipeline does: one call per polled run."""
    if poll <= 1:
        for ev, src in items:
            det.process(ev, src)
        return
    for i in range(0, len(items), poll):
        det.process_batch(items[i : i + poll])


def alone(cls, args) -> float:
    best = float("inf")
    for _ in range(args.repeat):
        stream = Stream(args.dims, args.principals, args.dict)
        det = cls()
        feed(det, stream.chunk(10_000), args.poll)
        timed = stream.chunk(args.alone)
        gc.collect()
        start = time.process_time()
        feed(det, timed, args.poll)
        best = min(best, (time.process_time() - start) / len(timed) * 1e6)
    return best


def memory_per_principal(det) -> tuple[float, int]:
    table = getattr(det, "table", None)
    if table is None or not len(table):
        return float("nan"), 0
    return len(pickle.dumps(table, protocol=pickle.HIGHEST_PROTOCOL)) / len(table), len(table)


def family(args) -> None:
    stream = Stream(args.dims, args.principals, args.dict, seed=1)
    dets = [cls() for cls in DETECTORS]
    clock = time.process_time
    done = 0
    for target in sorted(args.history):
        while done < target:
            chunk = stream.chunk(min(20_000, target - done))
            for i in range(0, len(chunk), max(args.poll, 1)):
                for det in dets:
                    feed(det, chunk[i : i + max(args.poll, 1)], args.poll)
            done = stream.n
        timed = stream.chunk(args.window)
        gc.collect()
        start = clock()
        for i in range(0, len(timed), max(args.poll, 1)):
            for det in dets:
                feed(det, timed[i : i + max(args.poll, 1)], args.poll)
        total = (clock() - start) / len(timed) * 1e6
        # Each detector on its own over the next window (same history): no
        # shared conversion, so these add up to more than the family total.
        timed = stream.chunk(args.window)
        costs = []
        for det in dets:
            gc.collect()
            start = clock()
            feed(det, timed, args.poll)
            costs.append((clock() - start) / len(timed) * 1e6)
        done = stream.n
        print(
            f"\n{target:,} events of history ({len(timed):,} timed per measure, "
            f"{args.principals} principals, {args.dims} dims):"
        )
        for det, cost in zip(dets, costs, strict=True):
            mem, held = memory_per_principal(det)
            print(
                f"  {det.name:24s} {cost:8.2f} us/event alone   "
                f"{mem:9.0f} B/principal ({held} held)"
            )
        print(f"  {'family, pipeline order':24s} {total:8.2f} us/event")
        for det in dets:
            indexes = getattr(det, "indexes", None)
            if indexes is not None:
                size = len(pickle.dumps(indexes, protocol=pickle.HIGHEST_PROTOCOL))
                print(
                    f"  {det.name} model index: {det.stats()['index_hashes']:.0f} hashes, "
                    f"{size / 1e6:.1f} MB pickled"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--principals", type=int, default=1000)
    ap.add_argument("--history", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--window", type=int, default=20_000)
    ap.add_argument("--alone", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dict", action="store_true", help="dict features instead of lists")
    ap.add_argument("--poll", type=int, default=2000,
                    help="events per process_batch call (1: process per event)")
    args = ap.parse_args()
    print(
        f"each detector alone ({args.dims} dims, {'dict' if args.dict else 'list'} features, "
        f"after 10k events of history, best of {args.repeat}, "
        f"{'per event' if args.poll <= 1 else f'polls of {args.poll}'}):"
    )
    for cls in DETECTORS:
        print(f"  {cls.name:24s} {alone(cls, args):8.2f} us/event")
    family(args)


if __name__ == "__main__":
    main()
