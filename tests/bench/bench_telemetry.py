"""Per-event cost and memory of the telemetry detectors.

Run: ``python tests/bench/bench_telemetry.py [--events N]``.

A stationary stream of inference events (two models, 10 numeric features, half
list and half dict features, class probabilities, 10 % labelled, 50 callers)
is built first; only ``process`` calls are timed, each detector alone and then
all five in turn on every event (what the daemon does). Memory per model is
the size of a snapshot of one detector's state divided by the models it holds.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from detectors.events import InferenceEvent
from detectors.findings import Source
from detectors.telemetry import DETECTORS


def stream(n: int, seed: int = 0, features: int = 10) -> list[InferenceEvent]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    logits = x[:, 0] + 0.5 * x[:, 1]
    p1 = 1 / (1 + np.exp(-logits))
    pred = (p1 > 0.5).astype(int)
    labelled = rng.random(n) < 0.1
    flip = rng.random(n) < 0.15
    who = rng.integers(0, 50, size=n)
    events = []
    for i in range(n):
        row = x[i].tolist()
        feats = row if i % 2 else {f"f{j}": v for j, v in enumerate(row)}
        label = int(pred[i] ^ flip[i]) if labelled[i] else None
        events.append(
            InferenceEvent(
                ts=1.7e9 + i * 0.01,
                model_id=f"model-{i % 2}",
                model_version="3",
                request_id=f"r{i}",
                principal=f"user-{who[i]}",
                features=feats,
                prediction=int(pred[i]),
                probabilities=[1 - p1[i], p1[i]],
                label=label,
            )
        )
    return events


def run(detectors, events) -> tuple[float, int]:
    found = 0
    sources = [Source("ml.inference", 0, i) for i in range(len(events))]
    # CPU time of this process: other work on a shared machine does not count.
    start = time.process_time()
    for event, source in zip(events, sources, strict=True):
        for det in detectors:
            out = det.process(event, source)
            if out:
                found += len(out)
    return time.process_time() - start, found


class _Noop:
    def process(self, event, source):
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args()
    events = stream(args.events)
    # Warm the imports (river, pyod, scipy) and caches outside the timing.
    for cls in DETECTORS:
        run([cls()], events[:5000])
    print(f"{len(events):,} stationary inference events, 2 models, 10 features")
    print(f"{'detector':24} {'us/event':>9} {'findings':>9} {'KiB/model':>10}")
    seconds, _ = run([_Noop()], events)
    print(f"{'(loop + call overhead)':24} {seconds / len(events) * 1e6:9.2f}")
    for cls in DETECTORS:
        det = cls()
        seconds, found = run([det], events)
        per_model = len(det.snapshot()) / max(1, len(det.table)) / 1024
        print(f"{cls.name:24} {seconds / len(events) * 1e6:9.2f} {found:9d} {per_model:10.1f}")
    family = [cls() for cls in DETECTORS]
    seconds, found = run(family, events)
    us = seconds / len(events) * 1e6
    print(f"{'family (all five)':24} {us:9.2f} {found:9d}")
    print(f"family alone would sustain {1e6 / us:,.0f} events/s on one core")
    sampled = [
        cls(sample_every=4) if cls.name in ("drift.features", "integrity.outliers") else cls()
        for cls in DETECTORS
    ]
    seconds, found = run(sampled, events)
    us = seconds / len(events) * 1e6
    print(f"{'family, sample_every=4':24} {us:9.2f} {found:9d}  (features and integrity)")
    assert math.isfinite(us)


if __name__ == "__main__":
    main()
