"""The reference of :class:`~detectors.telemetry.feature_drift.FeatureDriftDetector`.

What a model's inputs looked like, and how far a stationary window may stray:
reference-quantile bins per feature (one more for missing values), the PSI
null thresholds of a window of the detector's size, the PCA basis and the
calibrated threshold of the mean reconstruction error, and each caller's own
reference (see :mod:`detectors.telemetry.caller_mix`). Fitting is a pure
function of the reference blocks and the detector's settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.state import EntityTable
from detectors.state_codec import state_type
from detectors.telemetry.features import FeatureSchema
from detectors.telemetry.stats import (
    category_codes,
    mean_shift_margin,
    psi_null_thresholds,
    quantile_edges,
)
from detectors.telemetry.window import Block

__all__ = [
    "CallerReference",
    "FeatureReference",
    "bin_counts",
    "fit_feature_reference",
    "reconstruction_errors",
]


def bin_counts(codes: np.ndarray, slots: int) -> np.ndarray:
    """(features, slots) counts of a (rows, features) code matrix."""
    d = codes.shape[1]
    flat = codes.astype(np.int64) + np.arange(d, dtype=np.int64) * slots
    return np.bincount(flat.ravel(), minlength=d * slots).reshape(d, slots)


def reconstruction_errors(z: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Mean squared error per row of projecting standardised rows on a PCA basis."""
    residual = z - (z @ basis) @ basis.T
    return np.asarray(np.mean(residual * residual, axis=1))


@state_type("telemetry.caller_reference")
class CallerReference:
    """One caller's own reference: bin counts (features, bins + 1) and summed
    reconstruction errors of its first rows after the model's reference."""

    __slots__ = ("counts", "errors", "rows")

    def __init__(self, shape: tuple[int, int]) -> None:
        self.counts = np.zeros(shape)
        self.errors = 0.0
        self.rows = 0


@state_type("telemetry.feature_reference")
class FeatureReference:
    """A model's fitted reference (built by :func:`fit_feature_reference`)."""

    __slots__ = (
        "basis",
        "callers",
        "cat_maps",
        "center",
        "edges",
        "mv_cap",
        "mv_mean",
        "mv_threshold",
        "n",
        "names",
        "p_ref",
        "scale",
        "schema",
        "thresholds",
    )
    basis: np.ndarray | None
    callers: EntityTable[CallerReference]
    cat_maps: list[dict[Any, int]]
    center: np.ndarray
    edges: list[np.ndarray]
    mv_cap: float
    mv_mean: float
    mv_threshold: float
    n: int
    names: tuple[str, ...]
    p_ref: np.ndarray
    scale: np.ndarray
    schema: FeatureSchema
    thresholds: np.ndarray

    def codes(self, x: np.ndarray, cats: list[list[Any]], bins: int) -> np.ndarray:
        """(rows, features) bin codes of numeric rows ``x`` and categorical columns
        ``cats``: ``bins - 1`` is "other", ``bins`` is missing."""
        missing = bins
        other = bins - 1
        codes = np.empty((len(x), len(self.names)), dtype=np.int16)
        for j, edges in enumerate(self.edges):
            col = x[:, j]
            c = np.searchsorted(edges, col, side="right")
            c[np.isnan(col)] = missing
            codes[:, j] = c
        dn = len(self.edges)
        for j, (mapping, values) in enumerate(zip(self.cat_maps, cats, strict=True)):
            codes[:, dn + j] = [missing if v is None else mapping.get(v, other) for v in values]
        return codes

    def standardise(self, x: np.ndarray) -> np.ndarray:
        z: np.ndarray = (x - self.center) / self.scale
        z[~np.isfinite(z)] = 0.0  # missing values sit at the reference mean
        return z

    def errors(self, x: np.ndarray) -> np.ndarray | None:
        """Capped reconstruction error per row of ``x`` (None without a PCA basis)."""
        if self.basis is None:
            return None
        errors = reconstruction_errors(self.standardise(x), self.basis)
        np.minimum(errors, self.mv_cap, out=errors)
        return errors

    def learn_callers(
        self,
        codes: np.ndarray,
        principals: list[str],
        errors: np.ndarray | None,
        *,
        limit: int,
        bins: int,
    ) -> None:
        """Add rows to the own references of callers that have fewer than ``limit`` rows."""
        if not principals:
            return
        slots = bins + 1
        shape = (len(self.names), slots)
        uniq, inverse = np.unique(np.asarray(principals, dtype=object), return_inverse=True)
        # Callers in sorted order (new ones join the LRU table in that order) and how
        # many of their rows each still takes.
        learning: list[CallerReference] = []
        room = np.zeros(len(uniq), dtype=np.int64)
        for i, who in enumerate(uniq.tolist()):
            own = self.callers.get(who)
            if own is None:
                own = self.callers.touch(who, lambda: CallerReference(shape))
            if own.rows < limit:
                room[i] = limit - own.rows
                learning.append(own)
        if not learning:
            return
        # One pass for all callers: rows grouped by caller (stable: each caller's
        # first rows), cut to its room, counted per (caller, feature, bin).
        order = np.argsort(inverse, kind="stable")
        grouped = inverse[order]
        sizes = np.bincount(inverse, minlength=len(uniq))
        starts = np.cumsum(sizes) - sizes
        taken = np.arange(len(order)) - starts[grouped] < room[grouped]
        rows, callers = order[taken], grouped[taken]
        slot = np.cumsum(room > 0) - 1  # a learning caller's index in ``learning``
        d = codes.shape[1]
        flat = ((slot[callers] * d)[:, None] + np.arange(d)) * slots \
            + codes[rows].astype(np.int64)
        counts = np.bincount(flat.ravel(), minlength=len(learning) * d * slots)
        counts = counts.reshape(len(learning), d, slots)
        got = np.minimum(sizes, room)[room > 0].tolist()
        for own, n, c in zip(learning, got, counts, strict=True):
            own.counts += c
            own.rows += n
        if errors is not None:
            self._learn_errors(learning, got, errors[rows])

    @staticmethod
    def _learn_errors(learning: list[CallerReference], got: list[int], errors: np.ndarray) -> None:
        """Add each learning caller's run of ``errors`` (grouped by caller) to its sum,
        summed as numpy sums a caller's rows (pairwise; sequential below 8 rows)."""
        values = errors.tolist()
        at = 0
        for own, n in zip(learning, got, strict=True):
            if n < 8:
                total = 0.0
                for v in values[at:at + n]:
                    total += v
            else:
                total = float(errors[at:at + n].sum())
            own.errors += total
            at += n


def fit_feature_reference(
    schema: FeatureSchema,
    blocks: list[Block],
    *,
    bins: int,
    window_rows: int,
    alpha: float,
    min_psi: float,
    min_error_ratio: float,
    rng: np.random.Generator,
    caller_reference: int,
    max_callers: int,
) -> FeatureReference:
    """The reference of the rows of ``blocks`` (numeric matrix, categorical columns).

    ``alpha`` is the false-positive rate per evaluation and feature.
    """
    x = np.vstack([b.data[0] for b in blocks]) if blocks else np.empty((0, 0))
    cats: list[list[Any]] = [[] for _ in schema.categorical]
    for b in blocks:
        for j, values in enumerate(b.data[1]):
            cats[j].extend(values)
    ref = FeatureReference()
    ref.schema = schema
    ref.names = schema.numeric + schema.categorical
    ref.n = len(x)
    ref.edges = [quantile_edges(x[:, j], bins) for j in range(x.shape[1])]
    ref.cat_maps = [category_codes(values, bins - 1) for values in cats]
    codes = ref.codes(x, cats, bins)
    ref.p_ref = bin_counts(codes, bins + 1) / max(ref.n, 1)
    null = psi_null_thresholds(ref.p_ref, ref.n, window_rows, alpha, rng) if ref.names else 0
    ref.thresholds = np.maximum(min_psi, null)
    _fit_multivariate(ref, x, rng, alpha, window_rows, min_error_ratio)
    ref.callers = EntityTable(max_callers)
    if caller_reference and len(x):
        # All of a caller's rows in the model's reference: never a smaller own
        # reference than the model's for a caller that sent all of it.
        ref.learn_callers(codes, [p for b in blocks for p in b.principals], ref.errors(x),
                          limit=len(x), bins=bins)
    return ref


def _fit_multivariate(
    ref: FeatureReference,
    x: np.ndarray,
    rng: np.random.Generator,
    alpha: float,
    window_rows: int,
    min_error_ratio: float,
) -> None:
    """PCA basis (90% of the variance) on half the rows, error threshold on the rest."""
    ref.basis = None
    ref.mv_mean = ref.mv_threshold = float("nan")
    if x.shape[1] < 2 or len(x) < 40:
        return
    ref.center = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
    ref.center = np.nan_to_num(ref.center)
    scale = np.nanstd(x, axis=0)
    ref.scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    z = ref.standardise(x)
    order = rng.permutation(len(z))
    fit_rows, held_rows = z[order[: len(z) // 2]], z[order[len(z) // 2 :]]
    _, sing, vt = np.linalg.svd(fit_rows - fit_rows.mean(axis=0), full_matrices=False)
    var = sing**2
    if var.sum() <= 0:
        return
    k = int(np.searchsorted(np.cumsum(var) / var.sum(), 0.9) + 1)
    k = min(k, x.shape[1] - 1)
    ref.basis = vt[:k].T
    errors = reconstruction_errors(held_rows, ref.basis)
    # Errors are heavy-tailed: a few odd reference rows would make the mean's
    # null unstable. Capping at the held-out 99th percentile bounds any row's
    # weight; a broken correlation lifts many rows and still shows.
    ref.mv_cap = float(np.quantile(errors, 0.99))
    np.minimum(errors, ref.mv_cap, out=errors)
    mean, sd = float(errors.mean()), float(errors.std())
    ref.mv_mean = mean
    margin = mean_shift_margin(sd, window_rows, len(errors), alpha)
    ref.mv_threshold = max(min_error_ratio * mean, mean + margin)
