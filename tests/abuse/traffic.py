"""Attack and benign inference traffic against a scikit-learn victim, as events.

Every query an attack makes goes through :class:`QueryLog`, which answers from
the victim model and records an :class:`InferenceEvent` for the attacker's
principal, so the streams here are what real attack code sends, not lists made
by hand. The victim is a logistic regression on scikit-learn's bundled 8x8
digits (64 features in 0..16, 10 classes); data is split into the victim's
training set, a pool for benign callers and a separate natural pool for the
knockoff thief.

Attacks:
- ``hopskipjump_events`` / ``boundary_events``: IBM ART's HopSkipJump and
  BoundaryAttack (untargeted) through ``BlackBoxClassifier``.
- ``jbda_events``: Papernot et al.'s Jacobian-based dataset augmentation, the
  synthetic-query extraction that PRADA was built against.
- ``knockoff_events``: a natural-data thief (Orekondy et al.'s "random"
  Knockoff strategy): natural digits, lightly shifted, at volume.
"""

from __future__ import annotations

import random
from typing import NamedTuple

import numpy as np

from daemon.lab.attacks import digits_victim
from detectors.events import Event, InferenceEvent

__all__ = [
    "QueryLog",
    "Victim",
    "benign_events",
    "boundary_events",
    "hopskipjump_events",
    "interleave",
    "jbda_events",
    "knockoff_events",
    "victim",
]

T0 = 1_767_225_600.0
MODEL = "digits-lr"


class Victim(NamedTuple):
    model: object
    x_train: np.ndarray
    y_train: np.ndarray
    benign_pool: np.ndarray
    thief_pool: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def victim() -> Victim:
    """The digits model under attack and the data pools (deterministic)."""
    model, x, y, (a, b, c) = digits_victim()
    return Victim(model, x[:a], y[:a], x[a:b], x[b:c], x[c:], y[c:])


class QueryLog:
    """A victim ``predict_proba`` that logs every queried row as an event.

    ``gap`` is the mean seconds between two queries of this caller (exponential).
    """

    def __init__(self, principal: str, *, t0: float = T0, gap: float = 0.2, seed: int = 0) -> None:
        self.principal = principal
        self.t = t0
        self.gap = gap
        self.rng = random.Random(seed)
        self.events: list[InferenceEvent] = []
        self.model = victim().model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        proba = self.model.predict_proba(rows)
        for row, p in zip(rows, proba, strict=True):
            self.t += self.rng.expovariate(1.0 / self.gap)
            self.events.append(
                InferenceEvent(
                    ts=self.t,
                    model_id=MODEL,
                    request_id=f"{self.principal}-{len(self.events)}",
                    principal=self.principal,
                    features=row.tolist(),
                    prediction=int(p.argmax()),
                    probabilities=[round(float(v), 6) for v in p],
                )
            )
        return proba


def _blackbox(log: QueryLog):
    from art.estimators.classification import BlackBoxClassifier

    return BlackBoxClassifier(log, input_shape=(64,), nb_classes=10, clip_values=(0.0, 16.0))


def _targets(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` test digits to attack and, for each, a starting point of another class.

    ART draws its own starting point from an unseeded generator; giving one
    (a natural digit the model labels differently) makes the runs repeatable.
    """
    v = victim()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(v.x_test), size=n, replace=False)
    labels = _labels(v.x_test)
    starts = [v.x_test[rng.choice(np.flatnonzero(labels != labels[i]))] for i in idx]
    return v.x_test[idx], np.stack(starts)


def hopskipjump_events(
    principal: str = "attacker-hsj",
    *,
    n_samples: int = 1,
    max_iter: int = 5,
    max_eval: int = 200,
    init_eval: int = 20,
    seed: int = 1,
    t0: float = T0,
    gap: float = 0.05,
) -> list[InferenceEvent]:
    """Every query of an untargeted HopSkipJump run (ART) against the victim."""
    from art.attacks.evasion import HopSkipJump

    log = QueryLog(principal, t0=t0, gap=gap, seed=seed)
    np.random.seed(seed)  # ART draws from numpy's global generator
    attack = HopSkipJump(
        _blackbox(log),
        targeted=False,
        max_iter=max_iter,
        max_eval=max_eval,
        init_eval=init_eval,
        init_size=20,
        batch_size=1,
        verbose=False,
    )
    x, start = _targets(n_samples, seed)
    attack.generate(x, x_adv_init=start)
    return log.events


def boundary_events(
    principal: str = "attacker-boundary",
    *,
    n_samples: int = 1,
    max_iter: int = 60,
    seed: int = 2,
    t0: float = T0,
    gap: float = 0.05,
) -> list[InferenceEvent]:
    """Every query of an untargeted BoundaryAttack run (ART) against the victim."""
    from art.attacks.evasion import BoundaryAttack

    log = QueryLog(principal, t0=t0, gap=gap, seed=seed)
    np.random.seed(seed)
    attack = BoundaryAttack(
        _blackbox(log),
        targeted=False,
        max_iter=max_iter,
        num_trial=10,
        sample_size=10,
        init_size=20,
        batch_size=1,
        verbose=False,
    )
    x, start = _targets(n_samples, seed)
    attack.generate(x, x_adv_init=start)
    return log.events


def jbda_events(
    principal: str = "thief-jbda",
    *,
    rounds: int = 5,
    step: float = 2.0,
    seed: int = 3,
    t0: float = T0,
    gap: float = 0.3,
) -> list[InferenceEvent]:
    """Papernot et al.'s Jacobian-based augmentation extraction (synthetic queries).

    Seeds: one natural sample per class. Each round labels the new points with
    the victim, refits a logistic-regression substitute and adds
    ``x + step * sign(d logit_y / dx)`` for each point (clipped to 0..16).
    """
    from sklearn.linear_model import LogisticRegression

    v = victim()
    log = QueryLog(principal, t0=t0, gap=gap, seed=seed)
    labels = _labels(v.thief_pool)
    xs = np.stack([v.thief_pool[np.flatnonzero(labels == c)[0]] for c in range(10)])
    ys = log(xs).argmax(axis=1)
    for r in range(rounds):
        sub = LogisticRegression(max_iter=1000).fit(xs / 16.0, ys)
        rows = {c: i for i, c in enumerate(sub.classes_)}
        grads = np.stack([sub.coef_[rows[c]] for c in ys])  # d logit_y / dx, up to scale
        sign = (-1.0) ** r  # Papernot's periodic step reversal keeps points near the data
        new = np.clip(xs + sign * step * np.sign(grads), 0.0, 16.0)
        xs = np.concatenate([xs, new])
        ys = np.concatenate([ys, log(new).argmax(axis=1)])
    return log.events


def _labels(x: np.ndarray) -> np.ndarray:
    return victim().model.predict(x)  # type: ignore[attr-defined, no-any-return]


def _shifted(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` natural digits: pool images, each shifted by at most one pixel."""
    images = pool.reshape(-1, 8, 8)
    out = np.empty((n, 64))
    for i in range(n):
        img = images[rng.integers(len(images))]
        dy, dx = rng.integers(-1, 2, size=2)
        out[i] = np.roll(np.roll(img, dy, axis=0), dx, axis=1).ravel()
    return out


def knockoff_events(
    principal: str = "thief-knockoff",
    *,
    n_queries: int = 2000,
    seed: int = 4,
    t0: float = T0,
    gap: float = 1.0,
    fit_every: int = 0,
) -> tuple[list[InferenceEvent], list[float]]:
    """A natural-data thief: queries natural digits at volume and trains a copy.

    Returns the events and, if ``fit_every`` > 0, the stolen copy's test accuracy
    after every ``fit_every`` queries (to state what an alarm at query n cost).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    v = victim()
    log = QueryLog(principal, t0=t0, gap=gap, seed=seed)
    rng = np.random.default_rng(seed)
    xs = _shifted(v.thief_pool, n_queries, rng)
    ys = log(xs).argmax(axis=1)
    accuracy: list[float] = []
    for end in range(fit_every, n_queries + 1, fit_every) if fit_every > 0 else ():
        copy = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=1000))
        copy.fit(xs[:end], ys[:end])
        accuracy.append(float((copy.predict(v.x_test) == v.y_test).mean()))
    return log.events, accuracy


def benign_events(
    n_principals: int = 40,
    *,
    queries: tuple[int, int] = (40, 300),
    seed: int = 5,
    t0: float = T0,
    hours: float = 6.0,
) -> list[InferenceEvent]:
    """Many principals scoring natural held-out digits at human/service pace.

    Each principal has its own volume and mean gap (a few seconds to minutes,
    spread over ``hours``); some submit small bursts of several records at once.
    """
    v = victim()
    model = v.model
    rng = np.random.default_rng(seed)
    out: list[InferenceEvent] = []
    for p in range(n_principals):
        n = int(rng.integers(*queries))
        gap = hours * 3600.0 / n
        xs = _shifted(v.benign_pool, n, rng)
        proba = model.predict_proba(xs)  # type: ignore[attr-defined]
        t = t0 + float(rng.uniform(0, 600))
        for i in range(n):
            # bursts: a form/batch of a few records sent together, then a pause
            t += float(rng.exponential(gap)) if rng.random() < 0.5 else float(rng.uniform(0.2, 2))
            out.append(
                InferenceEvent(
                    ts=t,
                    model_id=MODEL,
                    request_id=f"b{p}-{i}",
                    principal=f"user-{p}",
                    features=xs[i].tolist(),
                    prediction=int(proba[i].argmax()),
                    probabilities=[round(float(q), 6) for q in proba[i]],
                )
            )
    out.sort(key=lambda e: e.ts)  # type: ignore[arg-type, return-value]
    return out


def interleave(*streams: list[InferenceEvent]) -> list[Event]:
    """Streams merged in event-time order (stable)."""
    merged = [e for s in streams for e in s]
    merged.sort(key=lambda e: e.ts)  # type: ignore[arg-type, return-value]
    return merged  # type: ignore[return-value]
