"""ART-driven scenarios for ``mlwatchd simulate --art``: real attack code, every query logged.

The victim is a scikit-learn logistic regression trained on the bundled 8x8
digits (64 features in 0..16, 10 classes), served as model ``digits-lr``.
Every row an attack sends goes through :class:`_QueryLog`, which answers from
the victim and records an inference event for the attacker's principal; the
streams are what the attack code really sent, not lists made by hand.

- ``art_hopskipjump`` / ``art_boundary``: IBM adversarial-robustness-toolbox's
  HopSkipJump and BoundaryAttack (untargeted) through ``BlackBoxClassifier``.
  ART draws its starting point from numpy's global generator; we seed it and
  pass ``x_adv_init`` (a natural digit of another class) so runs repeat.
- ``art_knockoff``: a natural-data thief (Knockoff Nets' "random" strategy):
  natural digits, each shifted by at most a pixel, at volume.

Benign callers of ``digits-lr`` score held-out natural digits during their
working hours every day, so the detectors have a reference for the model.

Needs ``adversarial-robustness-toolbox`` and ``scikit-learn`` (the ``lab``
extra); :func:`missing` says which is absent.
"""

from __future__ import annotations

import importlib.util
import random
from functools import cache
from typing import Any, NamedTuple

from daemon.lab.scenarios import ART_SCENARIOS, DAY, HOUR, T0, SimEvent

__all__ = ["MODEL", "art_events", "digits_victim", "missing"]

MODEL = "digits-lr"
_BY_NAME = {s.name: s for s in ART_SCENARIOS}


def missing() -> list[str]:
    """Import names of the packages the ART scenarios need but cannot import."""
    return [name for name, module in (("adversarial-robustness-toolbox", "art"),
                                      ("scikit-learn", "sklearn"))
            if importlib.util.find_spec(module) is None]


class _Victim(NamedTuple):
    model: Any
    benign_pool: Any
    thief_pool: Any
    x_test: Any


@cache
def digits_victim() -> tuple[Any, Any, Any, tuple[int, int, int]]:
    """The model under attack, deterministic: (model, x, y, (a, b, c)).

    ``x``/``y`` are load_digits shuffled with seed 0; the model (scaled
    LogisticRegression) is trained on ``x[:a]``. The simulation and the
    abuse tests split the rest at ``b`` and ``c`` into their pools.
    """
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order].astype(np.float64), y[order]
    a, b, c = 900, 1350, 1600
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000))
    model.fit(x[:a], y[:a])
    return model, x, y, (a, b, c)


def _victim() -> _Victim:
    model, x, _y, (a, b, c) = digits_victim()
    return _Victim(model, x[a:b], x[b:c], x[c:])


def _body(ts: float, who: str, rid: str, row: Any, proba: Any) -> dict[str, Any]:
    return {"event_type": "inference", "ts": round(ts, 3), "model_id": MODEL,
            "model_version": "1", "request_id": rid, "principal": who,
            "features": [round(float(v), 4) for v in row],
            "prediction": int(proba.argmax()),
            "probabilities": [round(float(v), 6) for v in proba]}


class _QueryLog:
    """The victim's ``predict_proba``; logs every queried row as a labelled event."""

    def __init__(self, principal: str, scenario: str, t0: float, gap: float, seed: int) -> None:
        self.principal = principal
        self.scenario = scenario
        self.t = t0
        self.gap = gap
        self.rng = random.Random(seed)
        self.events: list[SimEvent] = []
        self.model = _victim().model

    def __call__(self, x: Any) -> Any:
        import numpy as np

        rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        proba = self.model.predict_proba(rows)
        for row, p in zip(rows, proba, strict=True):
            self.t += self.rng.expovariate(1.0 / self.gap)
            rid = f"{self.principal}-{len(self.events):06d}"
            self.events.append(SimEvent(self.t, "inference", self.principal,
                                        _body(self.t, self.principal, rid, row, p),
                                        self.scenario))
        return proba


def _blackbox(log: _QueryLog) -> Any:
    from art.estimators.classification import BlackBoxClassifier

    return BlackBoxClassifier(log, input_shape=(64,), nb_classes=10, clip_values=(0.0, 16.0))


def _targets(n: int, seed: int) -> tuple[Any, Any]:
    import numpy as np

    v = _victim()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(v.x_test), size=n, replace=False)
    labels = v.model.predict(v.x_test)
    starts = [v.x_test[rng.choice(np.flatnonzero(labels != labels[i]))] for i in idx]
    return v.x_test[idx], np.stack(starts)


def _hopskipjump(t0: float, seed: int) -> list[SimEvent]:
    import numpy as np
    from art.attacks.evasion import HopSkipJump

    s = _BY_NAME["art_hopskipjump"]
    log = _QueryLog(s.entity_id, s.name, t0, gap=0.05, seed=seed)
    np.random.seed(seed)  # ART draws from numpy's global generator
    attack = HopSkipJump(_blackbox(log), targeted=False, max_iter=5, max_eval=200, init_eval=20,
                         init_size=20, batch_size=1, verbose=False)
    x, start = _targets(1, seed)
    attack.generate(x, x_adv_init=start)
    return log.events


def _boundary(t0: float, seed: int) -> list[SimEvent]:
    import numpy as np
    from art.attacks.evasion import BoundaryAttack

    s = _BY_NAME["art_boundary"]
    log = _QueryLog(s.entity_id, s.name, t0, gap=0.05, seed=seed)
    np.random.seed(seed)
    attack = BoundaryAttack(_blackbox(log), targeted=False, max_iter=60, num_trial=10,
                            sample_size=10, init_size=20, batch_size=1, verbose=False)
    x, start = _targets(1, seed)
    attack.generate(x, x_adv_init=start)
    return log.events


def _shifted(pool: Any, n: int, rng: Any) -> Any:
    """``n`` natural digits: pool images, each shifted by at most one pixel."""
    import numpy as np

    images = pool.reshape(-1, 8, 8)
    out = np.empty((n, 64))
    for i in range(n):
        img = images[rng.integers(len(images))]
        dy, dx = rng.integers(-1, 2, size=2)
        out[i] = np.roll(np.roll(img, dy, axis=0), dx, axis=1).ravel()
    return out


def _knockoff(t0: float, seed: int, n_queries: int = 2000) -> list[SimEvent]:
    import numpy as np

    s = _BY_NAME["art_knockoff"]
    log = _QueryLog(s.entity_id, s.name, t0, gap=1.0, seed=seed)
    log(_shifted(_victim().thief_pool, n_queries, np.random.default_rng(seed)))
    return log.events


def _benign(days: int, callers: int, per_day: int, seed: int) -> list[SimEvent]:
    """Callers scoring natural digits in business hours (UTC 7-20), bursts of a few rows."""
    import numpy as np

    v = _victim()
    rng = np.random.default_rng(seed)
    out: list[SimEvent] = []
    for p in range(callers):
        who = f"digits-app-{p:02d}"
        volume = per_day * float(rng.uniform(0.5, 1.5))
        for day in range(days):
            n = int(rng.poisson(volume))
            if n == 0:
                continue
            xs = _shifted(v.benign_pool, n, rng)
            proba = v.model.predict_proba(xs)
            ts = np.sort(rng.uniform(T0 + day * DAY + 7 * HOUR, T0 + day * DAY + 20 * HOUR, n))
            for i in range(n):
                t = float(ts[i])
                out.append(SimEvent(t, "inference", who,
                                    _body(t, who, f"{who}-{day}-{i:05d}", xs[i], proba[i])))
    return out


def art_events(seed: int, days: int, scale: float = 1.0) -> list[SimEvent]:
    """Benign ``digits-lr`` traffic for ``days`` plus the three ART scenarios on the last day."""
    import warnings

    with warnings.catch_warnings():  # ART's "PyTorch not found": irrelevant to a black box
        warnings.simplefilter("ignore", UserWarning)
        import art.attacks.evasion
        import art.estimators.classification  # noqa: F401
    day0 = T0 + (days - 1) * DAY
    events = _benign(days, max(2, round(10 * scale)), max(10, round(100 * scale)), seed)
    events += _hopskipjump(day0 + _BY_NAME["art_hopskipjump"].start_offset_s, seed + 1)
    events += _boundary(day0 + _BY_NAME["art_boundary"].start_offset_s, seed + 2)
    events += _knockoff(day0 + _BY_NAME["art_knockoff"].start_offset_s, seed + 3)
    return events
