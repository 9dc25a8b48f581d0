"""Per-event cost and memory of the access and audit detectors.

Run: ``python tests/bench/bench_access.py [--humans N] [--days D]``. Feeds the
benign multi-day traffic of ``tests/access/access_traffic.py`` (already
decoded, with Kafka-like sources) to each detector alone and to the whole
family, and prints microseconds per event (per event of the kinds the detector
takes, and per event of the whole stream) and the memory held per principal
(pickled snapshot size, and tracemalloc's live bytes). Times are CPU time
of this process (``time.process_time``), best of ``--repeat`` runs, so other
work on a shared machine inflates them less.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "access"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from access_traffic import benign_traffic

from detectors.access import DETECTORS
from detectors.events import event_type_of
from detectors.testing import sourced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--humans", type=int, default=180)
    parser.add_argument("--services", type=int, default=30)
    parser.add_argument("--days", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    events = benign_traffic(n_humans=args.humans, n_services=args.services, days=args.days)
    stream = [(e, s, event_type_of(e)) for e, s in sourced(events)]
    principals = len({getattr(e, "actor", None) or getattr(e, "principal", "") for e in events})
    print(f"{len(stream)} events, {principals} principals, {args.days} days")
    print(
        f"{'detector':28} {'us/taken':>9} {'us/event':>9} {'snap B/princ':>13} {'live B/princ':>13}"
    )
    total = 0.0
    for cls in DETECTORS:
        taken = [(e, s) for e, s, kind in stream if kind in cls.event_types]
        best = float("inf")
        for _ in range(args.repeat):
            detector = cls()
            process = detector.process
            gc.collect()
            start = time.process_time()
            for event, source in taken:
                process(event, source)
            best = min(best, time.process_time() - start)
        total += best
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        detector = cls()
        for event, source in taken:
            detector.process(event, source)
        live = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        snap = len(detector.snapshot())
        print(
            f"{cls.name:28} {best / max(len(taken), 1) * 1e6:9.2f} "
            f"{best / len(stream) * 1e6:9.2f} {snap / principals:13.0f} {live / principals:13.0f}"
        )
    # The family together, routed as the pipeline does (by event kind).
    by_kind: dict[str, list] = {"audit": [], "access": [], "inference": []}
    best = float("inf")
    for _ in range(args.repeat):
        detectors = [cls() for cls in DETECTORS]
        for kind in by_kind:
            by_kind[kind] = [d.process for d in detectors if kind in d.event_types]
        gc.collect()
        start = time.process_time()
        for event, source, kind in stream:
            for process in by_kind[kind]:
                process(event, source)
        best = min(best, time.process_time() - start)
    print(
        f"{'family (routed)':28} {'':9} {best / len(stream) * 1e6:9.2f}"
        f"   (sum of parts {total / len(stream) * 1e6:.2f})"
    )


if __name__ == "__main__":
    main()
