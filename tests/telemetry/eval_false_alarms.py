"""Long false-alarm evaluation of the telemetry family (not a test; about 1.5 min).

Run: ``python tests/telemetry/eval_false_alarms.py``. Feeds stationary streams
to every telemetry detector with default parameters and prints the findings
per stream and seed (all should be 0): a logistic regression answering
resampled breast-cancer rows (100k events), a random forest answering held-out
digits (100k) and the synthetic two-model stream of the tests (200k).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from telemetry_streams import from_model, stationary

from detectors.telemetry import DETECTORS
from detectors.testing import feed


def main(seeds: int = 3) -> None:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer(return_X_y=True)
    lr = LogisticRegression(max_iter=5000).fit(x[::2], y[::2])
    xd, yd = load_digits(return_X_y=True)
    rf = RandomForestClassifier(n_estimators=40, random_state=0).fit(xd[::2], yd[::2])
    results: dict[tuple[str, str], list[int]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(100 + seed)
        idx = rng.integers(0, len(x), size=100_000)
        rows = x[idx] * rng.normal(1, 0.02, size=(len(idx), x.shape[1]))
        cancer = from_model(lr, rows, labels=y[idx], label_every=10, name="cancer")
        idx = rng.integers(0, len(xd) // 2, size=100_000) * 2 + 1
        digits = from_model(rf, xd[idx], labels=yd[idx], label_every=10, name="digits")
        gauss = stationary(200_000, seed=200 + seed)
        for stream_name, events in (("cancer-lr", cancer), ("digits-rf", digits), ("gauss", gauss)):
            for cls in DETECTORS:
                results.setdefault((stream_name, cls.name), []).append(len(feed(cls(), events)))
    for (stream_name, name), counts in sorted(results.items()):
        print(f"{stream_name:10} {name:20} findings per seed: {counts}")


if __name__ == "__main__":
    main()
