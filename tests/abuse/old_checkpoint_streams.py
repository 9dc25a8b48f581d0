"""Event streams of ``test_old_checkpoints.py`` (also run, once, by the release that wrote them).

Each case: a detector name, its params, and a stream of inference events
(natural callers, then an attack) split where the snapshot was taken: after the
attack's first finding, inside its cooldown.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from detectors.events import InferenceEvent

T0 = 1_767_225_600.0


def _q(i: float, who: str, x: list[float], prediction: int = 0) -> InferenceEvent:
    return InferenceEvent(ts=T0 + i, model_id="m", request_id=f"{who}-{i}", principal=who,
                          features=x, prediction=prediction)


def _knn() -> list[InferenceEvent]:
    rng = random.Random(0)
    natural = [_q(i, f"u{i % 5}", [rng.gauss(0, 1) for _ in range(8)]) for i in range(600)]
    x0 = [rng.gauss(0, 1) for _ in range(8)]
    probe = [_q(600 + i, "eve", [v + rng.gauss(0, 0.01) for v in x0]) for i in range(600)]
    return natural + probe


def _prada() -> list[InferenceEvent]:
    rng = random.Random(1)
    natural = []
    for i in range(1800):
        x = [rng.gauss(0, 1) for _ in range(8)]
        natural.append(_q(i, f"u{i % 6}", x, int(x[0] > 0)))
    seeds = [[rng.gauss(0, 1) for _ in range(8)] for _ in range(4)]
    thief = []
    for i in range(600):
        scale = 10 ** rng.uniform(-3, 0)
        x = [v + scale * rng.gauss(0, 1) for v in seeds[i % 4]]
        thief.append(_q(1800 + i, "thief", x, int(x[0] > 0)))
    return natural + thief


def _coverage() -> list[InferenceEvent]:
    rng = random.Random(2)
    users = [_q(i, f"u{i % 30}", [rng.gauss(0, 1) for _ in range(8)]) for i in range(3000)]
    thief = [_q(3000 + i, "thief", [rng.gauss(0, 1) for _ in range(8)]) for i in range(1500)]
    return users + thief


def _peer_rate() -> list[InferenceEvent]:
    calm = [_q(float(t), f"u{t % 40}", [0.0]) for t in range(0, 3600, 2)]
    flood = [_q(3600 + i / 5, "newcomer", [0.0]) for i in range(600)]
    return calm + flood


#: name -> (params, stream, index of the first event after the snapshot)
CASES: dict[str, tuple[dict[str, object], Callable[[], list[InferenceEvent]], int]] = {
    "probing.stateful_knn": ({"cooldown_seconds": 150.0}, _knn, 700),
    "extraction.prada": ({"max_w": 0.98, "cooldown_seconds": 100.0}, _prada, 1950),
    "extraction.coverage": ({"cooldown_seconds": 300.0, "population_slots": 4096},
                            _coverage, 3500),
    "volume.peer_rate": ({"cooldown_seconds": 20.0}, _peer_rate, 1840),
}
