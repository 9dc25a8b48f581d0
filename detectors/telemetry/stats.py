"""Pure statistics of the telemetry detectors, vectorised with numpy.

Effect sizes (PSI, Jensen-Shannon), null thresholds for a false-alarm budget
(expected run time, ERT, as Alibi Detect: per-evaluation false-positive rate
``step / ert``), isotonic calibration and per-row confidence summaries.

>>> ref = np.array([[0.25, 0.25, 0.25, 0.25]])
>>> round(float(psi(ref, np.array([[0.1, 0.2, 0.3, 0.4]]))[0]), 3)
0.228
>>> alpha_per_evaluation(step=250, ert=1e8)
2.5e-06
>>> fit_isotonic(np.array([0.6, 0.7, 0.8, 0.9]), np.array([1.0, 0.0, 1.0, 1.0]))[1].tolist()
[0.5, 0.5, 1.0, 1.0]
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import numpy as np
from scipy import stats as _st

__all__ = [
    "alpha_per_evaluation",
    "apply_isotonic",
    "category_codes",
    "fit_isotonic",
    "gamma_tail",
    "js_distance",
    "margin_entropy",
    "mean_shift_margin",
    "normal_isf",
    "psi",
    "psi_null_thresholds",
    "quantile_edges",
]

#: Probability floor so that an empty bin gives a large, finite PSI term.
EPS: Final = 1e-4


def alpha_per_evaluation(step: int, ert: float) -> float:
    """False-positive rate allowed per evaluation so that alarms come every ``ert`` events.

    Evaluations happen every ``step`` events; a stationary stream then sees one
    false alarm per ``ert / step`` evaluations at most (union bound, so overlapping
    windows only make it more conservative).
    """
    return float(min(0.5, step / ert))


def normal_isf(alpha: float) -> float:
    """z such that P(Z > z) = alpha for a standard normal Z."""
    return float(_st.norm.isf(alpha))


def mean_shift_margin(sd: float, window: int, reference: int, alpha: float) -> float:
    """How far a window's mean may stray from the reference's on a stationary stream.

    One-sided normal test, at false-positive rate ``alpha``, of the difference
    of the means of ``window`` and ``reference`` values of spread ``sd``: the
    one threshold of the telemetry detectors' mean-shift baselines.

    >>> round(mean_shift_margin(1.0, 100, 100, 0.025), 3)
    0.277
    """
    return normal_isf(alpha) * float(sd * np.sqrt(1 / window + 1 / reference))


def psi(p_ref: np.ndarray, p_win: np.ndarray) -> np.ndarray:
    """Population stability index along the last axis (bins); proportions in, PSI out.

    Bins empty in both give 0; a bin empty in one side is floored at ``EPS``.
    """
    p = np.maximum(p_ref, EPS)
    q = np.maximum(p_win, EPS)
    return np.asarray(np.sum((q - p) * np.log(q / p), axis=-1))


def js_distance(p_ref: np.ndarray, p_win: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (base 2, in [0, 1]) along the last axis."""
    m = 0.5 * (p_ref + p_win)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / np.where(m > 0, m, 1.0)), 0.0)
        return np.asarray(np.sum(terms, axis=-1))

    return np.asarray(np.sqrt(np.maximum(0.5 * kl(p_ref) + 0.5 * kl(p_win), 0.0)))


def quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference quantiles, ties merged (NaN ignored)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.empty(0)
    qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def gamma_tail(samples: np.ndarray, alpha: float) -> np.ndarray:
    """The (1 - alpha) quantile of a gamma fitted by moments to ``samples`` (axis 0).

    Bootstrap samples are too few to read a 1e-6 quantile directly; chi-square
    like statistics (PSI is one, asymptotically) have gamma tails, so the tail
    is extrapolated from the fitted gamma. Never below the largest sample.
    """
    mean = np.atleast_1d(samples.mean(axis=0))
    var = np.atleast_1d(samples.var(axis=0))
    top = np.atleast_1d(samples.max(axis=0)).astype(float)
    spread = (var > 0) & (mean > 0)  # constant statistics (e.g. a constant feature) keep their max
    if spread.any():
        shape = mean[spread] ** 2 / var[spread]
        scale = var[spread] / mean[spread]
        top[spread] = np.maximum(top[spread], _st.gamma.isf(alpha, shape, scale=scale))
    return top.reshape(np.shape(samples.max(axis=0)))


def psi_null_thresholds(
    p_ref: np.ndarray,
    n_ref: int,
    n_win: int,
    alpha: float,
    rng: np.random.Generator,
    draws: int = 400,
) -> np.ndarray:
    """Per-row PSI that a stationary window exceeds with probability ``alpha``.

    Parametric bootstrap: both the reference and the window are redrawn from the
    reference proportions (multinomial), so the threshold includes the noise of a
    finite reference as well as of the window. ``p_ref`` is (features, bins).
    """
    p = p_ref / p_ref.sum(axis=-1, keepdims=True)
    ref = rng.multinomial(n_ref, p, size=(draws, p.shape[0])) / n_ref
    win = rng.multinomial(n_win, p, size=(draws, p.shape[0])) / n_win
    return gamma_tail(psi(ref, win), alpha)


def fit_isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x (pool adjacent violators).

    Returns the sorted x and the fitted values, for :func:`apply_isotonic`.
    """
    order = np.argsort(x, kind="stable")
    xs, ys = x[order].astype(float), y[order].astype(float)
    # Blocks of pooled means: value, weight, length.
    values: list[float] = []
    weights: list[float] = []
    lengths: list[int] = []
    for v in ys.tolist():
        values.append(v)
        weights.append(1.0)
        lengths.append(1)
        while len(values) > 1 and values[-2] > values[-1]:
            w = weights[-2] + weights[-1]
            v2 = (values[-2] * weights[-2] + values[-1] * weights[-1]) / w
            n2 = lengths[-2] + lengths[-1]
            del values[-1], weights[-1], lengths[-1]
            values[-1], weights[-1], lengths[-1] = v2, w, n2
    fitted = np.repeat(np.asarray(values), np.asarray(lengths))
    return xs, fitted


def apply_isotonic(model: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Calibrated values of ``x`` by linear interpolation of an isotonic fit."""
    xs, fitted = model
    return np.asarray(np.interp(x, xs, fitted))


def margin_entropy(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 minus top-2 probability, and entropy (nats), of each row of ``probs``."""
    if probs.shape[1] < 2:
        top = probs[:, 0]
        return np.abs(2 * top - 1), np.zeros(len(probs))
    part = np.partition(probs, -2, axis=1)
    margin = part[:, -1] - part[:, -2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=1)
    return margin, ent


def category_codes(values: list[Any], limit: int) -> dict[Any, int]:
    """Codes of the ``limit`` most frequent non-missing values, in order of frequency."""
    counts = Counter(v for v in values if v is not None)
    return {v: i for i, (v, _) in enumerate(counts.most_common(limit))}

