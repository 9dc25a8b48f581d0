"""Models behind the endpoint in a simulated world: four shapes, one interface.

Each victim draws natural inputs (benign callers, knockoff thieves), samples
its input box (synthetic extraction), answers queries (class and probabilities,
or a value for regression) and turns an input row into the wire form of
``features`` (an array, or an object of named features).

- ``image10``: the bundled 8x8 digits (64 pixel features 0..16, 10 classes)
  behind :func:`daemon.lab.attacks.digits_victim` (needs scikit-learn).
- ``tabular2``: a 2-class logistic model over 30 named features of very
  different scales (amounts in the millions, counts, ratios, flags, ages),
  sent as an object.
- ``regression``: 12 named features, a price-like value, no probabilities.
- ``embedding``: 48-dimensional unit vectors around 6 topics, 6 intents.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, Final

import numpy as np

__all__ = ["SHAPES", "Victim", "victim"]

SHAPES: Final = ("image10", "tabular2", "regression", "embedding")

Array = Any  # numpy arrays; numpy's stubs do not help mypy --strict here


def _sigmoid(z: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


class Victim:
    """The interface; subclasses fill it in."""

    shape: str = ""
    model_id: str = ""
    classes: int = 0  # 0: regression

    def natural(self, rng: np.random.Generator, n: int, noise: float = 0.0,
                offset: float = 0.0) -> Array:
        """``n`` natural inputs; ``noise``/``offset``: a caller's own noise and segment."""
        raise NotImplementedError

    def thief_pool(self, rng: np.random.Generator, n: int) -> Array:
        """Natural inputs a thief owns (not the benign callers' pool)."""
        return self.natural(rng, n)

    def box(self, rng: np.random.Generator, n: int) -> Array:
        """Synthetic inputs spread over the whole input box."""
        raise NotImplementedError

    def drifted(self, rng: np.random.Generator, n: int) -> Array:
        """Inputs after an upstream change (the ``input_drift`` scenario)."""
        raise NotImplementedError

    def answer(self, x: Array) -> tuple[list[Any], Array | None]:
        """Predictions and probabilities (None for regression) of rows ``x``."""
        raise NotImplementedError

    def decide(self, x: Array) -> int:
        """A class for boundary search (regression: above or below the median)."""
        pred, _ = self.answer(x.reshape(1, -1))
        return int(pred[0])

    def wire(self, row: Array) -> list[float] | dict[str, float | int]:
        return [round(float(v), 4) for v in row]

    def scale(self) -> Array:
        """Per-feature spread, for probes that must be small on every feature."""
        raise NotImplementedError


class ImageVictim(Victim):
    shape = "image10"
    model_id = "digits-cnn"
    classes = 10

    def __init__(self) -> None:
        from daemon.lab.attacks import digits_victim

        self.model, x, _y, (a, b, c) = digits_victim()
        self.pool, self.thief, self.test = x[a:b], x[b:c], x[c:]

    @staticmethod
    def _shifted(pool: Array, n: int, rng: np.random.Generator) -> Array:
        images = pool.reshape(-1, 8, 8)
        idx = rng.integers(len(images), size=n)
        out = np.empty((n, 64))
        shifts = rng.integers(-1, 2, size=(n, 2))
        for i in range(n):
            out[i] = np.roll(np.roll(images[idx[i]], shifts[i, 0], axis=0), shifts[i, 1],
                             axis=1).ravel()
        return out

    def natural(self, rng: np.random.Generator, n: int, noise: float = 0.0,
                offset: float = 0.0) -> Array:
        x = self._shifted(self.pool, n, rng)
        if noise > 0:
            x = np.clip(x + rng.normal(0, noise * 2.0, x.shape), 0, 16)
        if offset:
            x = np.clip(x * (1.0 + 0.1 * offset), 0, 16)
        return x

    def thief_pool(self, rng: np.random.Generator, n: int) -> Array:
        # Class-balanced natural digits from a pool the benign callers never send.
        labels = self.model.predict(self.thief)
        per = [np.flatnonzero(labels == k) for k in range(10)]
        per = [p for p in per if len(p)]
        idx = np.array([per[i % len(per)][rng.integers(len(per[i % len(per)]))]
                        for i in range(n)])
        return self._shifted(self.thief[idx], n, rng) if n else np.empty((0, 64))

    def box(self, rng: np.random.Generator, n: int) -> Array:
        return rng.integers(0, 17, size=(n, 64)).astype(np.float64)

    def drifted(self, rng: np.random.Generator, n: int) -> Array:
        # A new camera: dimmer, blurred to the right, a hot column.
        x = self.natural(rng, n)
        x = np.clip(0.6 * x + 0.4 * np.roll(x.reshape(-1, 8, 8), 1, axis=2).reshape(n, 64), 0, 16)
        x[:, 7::8] = 12.0
        return x

    def answer(self, x: Array) -> tuple[list[Any], Array | None]:
        proba = self.model.predict_proba(x)
        return [int(v) for v in proba.argmax(axis=1)], proba

    def scale(self) -> Array:
        return np.full(64, 4.0)


# (name, kind, a, b): amount = lognormal(a, b); count = floor(lognormal(a, b));
# ratio = sigmoid(a + b u); flag = u > a; age/score/days = clip(a + b u).
_TABULAR: Final = (
    ("annual_income", "amount", 11.0, 0.7), ("account_balance", "amount", 8.5, 1.6),
    ("credit_limit", "amount", 9.2, 0.8), ("loan_amount", "amount", 9.8, 1.1),
    ("avg_txn_amount", "amount", 3.8, 0.9), ("max_txn_amount_30d", "amount", 6.0, 1.2),
    ("txn_count_30d", "count", 3.2, 0.8), ("txn_count_90d", "count", 4.3, 0.8),
    ("logins_30d", "count", 2.5, 0.9), ("support_calls_90d", "count", 0.3, 0.9),
    ("failed_payments_1y", "count", -0.5, 1.0), ("devices_seen", "count", 0.7, 0.5),
    ("utilisation", "ratio", -0.8, 1.0), ("savings_rate", "ratio", -1.5, 0.8),
    ("night_txn_share", "ratio", -2.2, 0.9), ("foreign_txn_share", "ratio", -3.0, 1.1),
    ("online_share", "ratio", 0.4, 1.2), ("has_mortgage", "flag", 0.4, 0.0),
    ("has_credit_card", "flag", -0.8, 0.0), ("is_business", "flag", 1.3, 0.0),
    ("email_verified", "flag", -1.5, 0.0), ("age", "age", 44.0, 14.0),
    ("credit_score", "score", 680.0, 70.0), ("tenure_days", "days", 1500.0, 1100.0),
    ("days_since_last_login", "days", 6.0, 9.0), ("postcode_risk", "ratio", -1.0, 0.7),
    ("dependants", "count", 0.2, 0.7), ("years_at_address", "age", 7.0, 6.0),
    ("merchant_categories_90d", "count", 2.3, 0.5), ("chargebacks_1y", "count", -1.8, 1.0),
)

_REGRESSION: Final = (
    ("living_area_sqm", "amount", 4.5, 0.4), ("lot_area_sqm", "amount", 6.2, 0.9),
    ("bedrooms", "count", 1.1, 0.35), ("bathrooms", "count", 0.5, 0.4),
    ("year_built", "age", 1975.0, 25.0), ("distance_to_centre_km", "amount", 2.0, 0.8),
    ("latitude", "age", 48.1, 0.15), ("longitude", "age", 11.5, 0.2),
    ("floor", "count", 0.8, 0.8), ("has_garage", "flag", 0.0, 0.0),
    ("energy_rating", "age", 4.0, 1.5), ("school_score", "ratio", 0.3, 0.9),
)


class TabularVictim(Victim):
    """Named features of very different scales from a correlated latent; a linear model."""

    def __init__(self, specs: tuple[tuple[str, str, float, float], ...], shape: str,
                 model_id: str, classes: int) -> None:
        self.specs = specs
        self.shape, self.model_id, self.classes = shape, model_id, classes
        rng = np.random.default_rng(1234 + len(specs))
        k = len(specs)
        self.loadings = rng.normal(0, 0.6, (k, 4))
        self.weights = rng.normal(0, 1.0, k)
        sample = self._features(self._latent(np.random.default_rng(99), 4000))
        self.mu, self.sd = self._standard(sample)
        z = self._logit(sample)
        self.bias = -float(np.quantile(z, 0.85)) if classes else -float(np.median(z))
        self.lo = np.quantile(sample, 0.005, axis=0)
        self.hi = np.quantile(sample, 0.995, axis=0)
        self.spread = np.maximum(sample.std(axis=0), 1e-3)

    def _latent(self, rng: np.random.Generator, n: int, shift: float = 0.0) -> Array:
        common = rng.normal(shift, 1.0, (n, self.loadings.shape[1]))
        own = rng.normal(0, 0.8, (n, len(self.specs)))
        u: Array = common @ self.loadings.T + own
        return u

    def _features(self, u: Array) -> Array:
        out = np.empty_like(u)
        for j, (_name, kind, a, b) in enumerate(self.specs):
            col = u[:, j]
            if kind == "amount":
                out[:, j] = np.round(np.exp(a + b * col), 2)
            elif kind == "count":
                out[:, j] = np.floor(np.exp(a + b * col))
            elif kind == "ratio":
                out[:, j] = np.round(_sigmoid(a + b * col), 4)
            elif kind == "flag":
                out[:, j] = (col > a).astype(np.float64)
            else:  # age / score / days
                out[:, j] = np.round(np.maximum(a + b * col, 0.0), 1)
        return out

    def _standard(self, x: Array) -> tuple[Array, Array]:
        t = self._transform(x)
        return t.mean(axis=0), np.maximum(t.std(axis=0), 1e-6)

    def _transform(self, x: Array) -> Array:
        t = np.array(x, dtype=np.float64)
        for j, (_name, kind, _a, _b) in enumerate(self.specs):
            if kind in ("amount", "count"):
                t[:, j] = np.log1p(np.maximum(t[:, j], 0.0))
        return t

    def _logit(self, x: Array) -> Array:
        t = (self._transform(x) - self.mu) / self.sd
        z: Array = t @ self.weights * (1.5 / math.sqrt(len(self.specs)))
        return z

    def natural(self, rng: np.random.Generator, n: int, noise: float = 0.0,
                offset: float = 0.0) -> Array:
        x = self._features(self._latent(rng, n, shift=offset))
        if noise > 0:  # a caller's own measurement noise, relative to each feature
            jitter = rng.normal(0, noise * 0.05, x.shape) * self.spread
            x = x + jitter
            for j, (_name, kind, _a, _b) in enumerate(self.specs):
                if kind in ("amount", "count", "days", "age", "score"):
                    x[:, j] = np.maximum(x[:, j], 0.0)
            x = np.round(x, 4)
        return x

    def box(self, rng: np.random.Generator, n: int) -> Array:
        return rng.uniform(self.lo, self.hi, (n, len(self.specs)))

    def drifted(self, rng: np.random.Generator, n: int) -> Array:
        x = self.natural(rng, n, offset=1.2)
        x[:, 0] = x[:, 0] * 100.0  # an upstream unit change (e.g. cents)
        return x

    def answer(self, x: Array) -> tuple[list[Any], Array | None]:
        z = self._logit(x) + self.bias
        if self.classes:
            p1 = _sigmoid(z)
            proba = np.stack([1 - p1, p1], axis=1)
            return [int(v) for v in (p1 >= 0.5)], proba
        return [round(float(250_000 * math.exp(0.35 * v)), 2) for v in z], None

    def decide(self, x: Array) -> int:
        z = float(self._logit(x.reshape(1, -1))[0] + self.bias)
        return int(z >= 0)

    def wire(self, row: Array) -> list[float] | dict[str, float | int]:
        out: dict[str, float | int] = {}
        for (name, kind, _a, _b), v in zip(self.specs, row, strict=True):
            f = float(v)
            out[name] = int(f) if kind in ("count", "flag") and f.is_integer() else round(f, 4)
        return out

    def scale(self) -> Array:
        return self.spread


class EmbeddingVictim(Victim):
    shape = "embedding"
    model_id = "intent-router"
    classes = 6
    dims = 48

    def __init__(self) -> None:
        rng = np.random.default_rng(4242)
        c = rng.normal(0, 1, (self.classes, self.dims))
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        d = rng.normal(0, 1, self.dims)
        self.drift_dir = d / np.linalg.norm(d)

    @staticmethod
    def _unit(x: Array) -> Array:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)

    def natural(self, rng: np.random.Generator, n: int, noise: float = 0.0,
                offset: float = 0.0) -> Array:
        topics = rng.choice(self.classes, size=n, p=_topic_mix(offset, self.classes))
        x = self.centres[topics] + rng.normal(0, 0.13 + 0.05 * noise, (n, self.dims))
        return self._unit(x)

    def box(self, rng: np.random.Generator, n: int) -> Array:
        return self._unit(rng.normal(0, 1, (n, self.dims)))

    def drifted(self, rng: np.random.Generator, n: int) -> Array:
        return self._unit(self.natural(rng, n) + 0.8 * self.drift_dir)

    def answer(self, x: Array) -> tuple[list[Any], Array | None]:
        logits = 8.0 * (x @ self.centres.T)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        proba = e / e.sum(axis=1, keepdims=True)
        return [int(v) for v in proba.argmax(axis=1)], proba

    def scale(self) -> Array:
        return np.full(self.dims, 0.15)


def _topic_mix(offset: float, k: int) -> Array:
    """A caller's topic mix: segment ``offset`` tilts it away from uniform."""
    w = np.exp(offset * np.cos(np.arange(k) * 1.7))
    mix: Array = w / w.sum()
    return mix


@cache
def victim(shape: str) -> Victim:
    """The victim of a shape (built once per process; deterministic)."""
    if shape == "image10":
        return ImageVictim()
    if shape == "tabular2":
        return TabularVictim(_TABULAR, "tabular2", "credit-risk", 2)
    if shape == "regression":
        return TabularVictim(_REGRESSION, "regression", "price-estimator", 0)
    if shape == "embedding":
        return EmbeddingVictim()
    raise ValueError(f"unknown victim shape {shape!r}; one of {', '.join(SHAPES)}")
