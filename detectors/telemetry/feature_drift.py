"""Input (feature) drift of a model against its reference.

Both compare the binned distribution of a sliding window with the reference by
the population stability index (PSI) on reference-quantile bins, one bin more
for missing values; Jensen-Shannon distance is reported alongside. A window
drifts when an effect is both statistically beyond the false-alarm budget and
at least a minimum size (``min_psi``): a p-value alone would flag every
feature of a large enough window.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from scipy import stats as _st

from detectors.events import InferenceEvent
from detectors.findings import Finding, Severity, Source
from detectors.state import EntityTable
from detectors.state_codec import state_type
from detectors.telemetry.features import FeatureSchema, attribute, scope_phrase
from detectors.telemetry.stats import (
    alpha_per_evaluation,
    category_codes,
    js_distance,
    normal_isf,
    psi,
    psi_null_thresholds,
    quantile_edges,
)
from detectors.telemetry.window import (
    ATLAS_EVASION,
    Block,
    ModelState,
    WindowedModelDetector,
)

__all__ = ["FeatureDriftDetector", "reconstruction_errors"]


def _bin_counts(codes: np.ndarray, slots: int) -> np.ndarray:
    """(features, slots) counts of a (rows, features) code matrix."""
    d = codes.shape[1]
    flat = codes.astype(np.int64) + np.arange(d, dtype=np.int64) * slots
    return np.bincount(flat.ravel(), minlength=d * slots).reshape(d, slots)


def reconstruction_errors(z: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Mean squared error per row of projecting standardised rows on a PCA basis."""
    residual = z - (z @ basis) @ basis.T
    return np.asarray(np.mean(residual * residual, axis=1))


@state_type("telemetry.caller_reference")
class _CallerReference:
    """One caller's own reference: bin counts (features, bins + 1) and summed
    reconstruction errors of its first rows after the model's reference."""

    __slots__ = ("counts", "errors", "rows")

    def __init__(self, shape: tuple[int, int]) -> None:
        self.counts = np.zeros(shape)
        self.errors = 0.0
        self.rows = 0


@state_type("telemetry.feature_reference")
class _FeatureReference:
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
    callers: EntityTable[_CallerReference]
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


class FeatureDriftDetector(WindowedModelDetector):
    """Feature drift of a model: per-feature PSI plus a multivariate PCA signal.

    Per feature, PSI of the window against the reference on ``bins`` quantile
    bins (numeric) or the ``bins - 1`` most frequent categories plus "other"
    (string features), each with one more bin for missing values, so a feature
    that stops arriving drifts too. A feature drifts when its PSI exceeds both
    ``min_psi`` and its null threshold: a parametric bootstrap of the PSI of a
    stationary window, gamma tail at false-positive rate ``step / ert`` divided
    by the number of features. The multivariate signal is the mean PCA
    reconstruction error of standardised numeric features (NannyML's data
    reconstruction drift), which sees broken correlations that no single
    feature shows; it drifts above ``min_error_ratio`` times its reference mean
    and its null threshold. Findings name the top drifting features (never
    their values) and the callers whose traffic explains the drift.

    **Caller mix.** A model's callers differ (their own segment, noise, a set
    of repeated inputs), and which of them are active follows the clock (time
    zones, a nightly batch): the window's caller mix moves every day though no
    caller's inputs change. Each caller has its own reference: its rows in the
    model's reference and later ones, used once it holds ``caller_reference``
    rows; it grows (up to ``reference_size`` rows, then frozen) only from
    windows that did not drift, so a drift does not teach itself. A window that drifts against the
    model's reference is also compared with the mix of its own callers'
    references, weighted by their share of the window (callers without one
    count with the model's reference, so a new caller with odd inputs still
    drifts), with a threshold from the same false-alarm budget for the mix's
    sample size; the finding needs both. From the first day on, then, a caller
    is compared with itself once it has sent ``caller_reference`` rows; before,
    with the model's reference. ``caller_reference: 0`` turns this off.

    Tune per model with ``overrides={"model-id": {"min_psi": 0.2, "ert": 1e9}}``.

    >>> import random
    >>> from detectors.testing import feed
    >>> rng = random.Random(0)
    >>> def ev(i, shift=0.0):
    ...     return InferenceEvent(ts=i, model_id="m", request_id=str(i), principal="p",
    ...         features=[rng.gauss(shift, 1), rng.gauss(0, 1)], prediction=0)
    >>> det = FeatureDriftDetector(reference_size=1000, window=500, step=100)
    >>> feed(det, [ev(i) for i in range(6000)])
    []
    >>> [f.evidence["top_features"][0]["feature"] for f in
    ...  feed(det, [ev(i, shift=1.0) for i in range(6000, 7000)])]
    ['f0']
    """

    name: ClassVar[str] = "drift.features"
    overridable: ClassVar[tuple[str, ...]] = ("ert", "min_psi", "min_error_ratio")

    def __init__(
        self,
        reference_size: int = 2000,
        window: int = 1000,
        step: int = 250,
        ert: float = 1e8,
        bins: int = 10,
        min_psi: float = 0.1,
        min_error_ratio: float = 1.25,
        max_features: int = 256,
        sample_every: int = 1,
        max_models: int = 64,
        reference_path: str | None = None,
        overrides: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
        caller_reference: int = 50,
        max_callers: int = 2000,
    ) -> None:
        if bins < 2:
            raise ValueError("bins must be at least 2")
        if caller_reference < 0 or max_callers < 1:
            raise ValueError("caller_reference must be >= 0 and max_callers >= 1")
        self.caller_reference = caller_reference
        self.max_callers = max_callers
        self.bins = bins
        self.min_psi = min_psi
        self.min_error_ratio = min_error_ratio
        self.max_features = max_features
        super().__init__(
            reference_size=reference_size,
            window=window,
            step=step,
            ert=ert,
            sample_every=sample_every,
            max_models=max_models,
            reference_path=reference_path,
            overrides=overrides,
            seed=seed,
        )

    # -- blocks ----------------------------------------------------------------------

    def summarise(self, st: ModelState, events: list[InferenceEvent]) -> Any:
        rows = [e.features for e in events]
        ref: _FeatureReference | None = st.ref
        if ref is None:
            if st.extra is None:
                st.extra = FeatureSchema.learn(rows, self.max_features)
            schema: FeatureSchema = st.extra
            return schema.numeric_matrix(rows), schema.categorical_columns(rows)
        x = ref.schema.numeric_matrix(rows)
        codes = self._codes(ref, x, ref.schema.categorical_columns(rows))
        errors = None
        if ref.basis is not None:
            errors = reconstruction_errors(self._standardise(ref, x), ref.basis)
            np.minimum(errors, ref.mv_cap, out=errors)
        return codes, _bin_counts(codes, self.bins + 1), errors

    def _codes(self, ref: _FeatureReference, x: np.ndarray, cats: list[list[Any]]) -> np.ndarray:
        missing = self.bins
        other = self.bins - 1
        codes = np.empty((len(x), len(ref.names)), dtype=np.int16)
        for j, edges in enumerate(ref.edges):
            col = x[:, j]
            c = np.searchsorted(edges, col, side="right")
            c[np.isnan(col)] = missing
            codes[:, j] = c
        dn = len(ref.edges)
        for j, (mapping, values) in enumerate(zip(ref.cat_maps, cats, strict=True)):
            codes[:, dn + j] = [missing if v is None else mapping.get(v, other) for v in values]
        return codes

    @staticmethod
    def _standardise(ref: _FeatureReference, x: np.ndarray) -> np.ndarray:
        z: np.ndarray = (x - ref.center) / ref.scale
        z[~np.isfinite(z)] = 0.0  # missing values sit at the reference mean
        return z

    # -- reference -------------------------------------------------------------------

    def fit_reference(self, st: ModelState, blocks: list[Block]) -> _FeatureReference:
        schema: FeatureSchema = st.extra
        x = np.vstack([b.data[0] for b in blocks]) if blocks else np.empty((0, 0))
        cats: list[list[Any]] = [[] for _ in schema.categorical]
        for b in blocks:
            for j, values in enumerate(b.data[1]):
                cats[j].extend(values)
        ref = _FeatureReference()
        ref.schema = schema
        ref.names = schema.numeric + schema.categorical
        ref.n = len(x)
        ref.edges = [quantile_edges(x[:, j], self.bins) for j in range(x.shape[1])]
        ref.cat_maps = [category_codes(values, self.bins - 1) for values in cats]
        codes = self._codes(ref, x, cats)
        counts = _bin_counts(codes, self.bins + 1)
        ref.p_ref = counts / max(ref.n, 1)
        alpha = alpha_per_evaluation(self.step, st.params["ert"]) / max(len(ref.names), 1)
        rng = self.rng_for(st)
        null = (
            psi_null_thresholds(ref.p_ref, ref.n, self.window_rows, alpha, rng) if ref.names else 0
        )
        ref.thresholds = np.maximum(st.params["min_psi"], null)
        self._fit_multivariate(st, ref, x, rng, alpha)
        ref.callers = EntityTable(self.max_callers)
        if self.caller_reference and len(x):
            errors = None
            if ref.basis is not None:
                errors = reconstruction_errors(self._standardise(ref, x), ref.basis)
                np.minimum(errors, ref.mv_cap, out=errors)
            # All of a caller's rows in the model's reference: never a smaller own
            # reference than the model's for a caller that sent all of it.
            self._learn_callers(ref, codes, [p for b in blocks for p in b.principals], errors,
                                limit=len(x))
        return ref

    def _learn_callers(
        self,
        ref: _FeatureReference,
        codes: np.ndarray,
        principals: list[str],
        errors: np.ndarray | None,
        limit: int | None = None,
    ) -> None:
        """Add rows to the own references of callers that have fewer than ``limit``
        (``caller_reference``) rows."""
        if not principals:
            return
        limit = self.caller_reference if limit is None else limit
        shape = (len(ref.names), self.bins + 1)
        uniq, inverse = np.unique(np.asarray(principals, dtype=object), return_inverse=True)
        for i, who in enumerate(uniq.tolist()):
            own = ref.callers.get(who)
            if own is None:
                own = ref.callers.touch(who, lambda: _CallerReference(shape))
            if own.rows >= limit:
                continue
            rows = np.flatnonzero(inverse == i)[: limit - own.rows]
            own.counts += _bin_counts(codes[rows], self.bins + 1)
            own.rows += len(rows)
            if errors is not None:
                own.errors += float(errors[rows].sum())

    def _mix_score(
        self,
        st: ModelState,
        ref: _FeatureReference,
        blocks: list[Block],
        p_win: np.ndarray,
        mv_mean: float,
    ) -> dict[str, Any]:
        """The window against the mix of its callers' own references (see class doc)."""
        principals = [p for b in blocks for p in b.principals]
        n = len(principals)
        uniq, counts = np.unique(np.asarray(principals, dtype=object), return_counts=True)
        expected = np.zeros_like(ref.p_ref)
        inv_eff, unknown, err, own_rows, own_callers = 0.0, 0.0, 0.0, 0, 0
        for who, k in zip(uniq.tolist(), counts.tolist(), strict=True):
            w = k / n
            own = ref.callers.get(who)
            if own is not None and own.rows >= self.caller_reference:
                expected += w * own.counts / own.rows
                inv_eff += w * w / own.rows
                err += w * own.errors / own.rows
                own_rows += k
                own_callers += 1
            else:
                unknown += w
        expected += unknown * ref.p_ref
        inv_eff += unknown * unknown / max(ref.n, 1)
        n_eff = max(int(1.0 / inv_eff), 1) if inv_eff > 0 else max(ref.n, 1)
        alpha = alpha_per_evaluation(self.step, st.params["ert"]) / max(len(ref.names), 1)
        # PSI of two multinomial samples is asymptotically chi-square / (harmonic
        # size): the closed form, as a bootstrap per evaluation costs ~30 ms.
        bins = np.maximum((expected > 0).sum(axis=1) - 1, 1)
        null = (1.0 / n_eff + 1.0 / n) * _st.chi2.isf(alpha, bins)
        ratios = psi(expected, p_win) / np.maximum(st.params["min_psi"], null)
        score = float(ratios.max()) if len(ratios) else 0.0
        if ref.basis is not None and ref.mv_mean > 0:
            err += unknown * ref.mv_mean
            score = max(score, mv_mean / (ref.mv_threshold * err / ref.mv_mean))
        return {
            "score": round(score, 3),
            "top_features": [ref.names[j] for j in np.argsort(-ratios)[:3].tolist()],
            "callers_with_own_reference": own_callers,
            "share_judged_against_own_reference": round(own_rows / max(n, 1), 4),
            "reference_rows_effective": n_eff,
        }

    def _fit_multivariate(
        self,
        st: ModelState,
        ref: _FeatureReference,
        x: np.ndarray,
        rng: np.random.Generator,
        alpha: float,
    ) -> None:
        ref.basis = None
        ref.mv_mean = ref.mv_threshold = float("nan")
        if x.shape[1] < 2 or len(x) < 40:
            return
        ref.center = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
        ref.center = np.nan_to_num(ref.center)
        scale = np.nanstd(x, axis=0)
        ref.scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        z = self._standardise(ref, x)
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
        se = sd * np.sqrt(1 / self.window_rows + 1 / len(errors))
        ref.mv_mean = mean
        ref.mv_threshold = max(st.params["min_error_ratio"] * mean, mean + normal_isf(alpha) * se)

    def stats(self) -> dict[str, float]:
        """Also the calibration sample sizes (of the model with the most): reference
        rows, callers with a complete own reference."""
        out = super().stats()
        refs = [st.ref for _, st in self.table.items() if isinstance(st.ref, _FeatureReference)]
        out["calibration_reference_events"] = max((r.n for r in refs), default=0)
        out["calibration_callers_with_own_reference"] = max(
            (sum(1 for _, c in getattr(r, "callers", {}).items()
                 if c.rows >= self.caller_reference) for r in refs), default=0)
        return out

    # -- windows ---------------------------------------------------------------------

    def evaluate(
        self, st: ModelState, blocks: list[Block], event: InferenceEvent, source: Source
    ) -> Finding | None:
        ref: _FeatureReference = st.ref
        if not ref.names:
            return None
        counts = sum(b.data[1] for b in blocks)
        n = int(counts[0].sum())
        p_win = counts / n
        psis = psi(ref.p_ref, p_win)
        ratios = psis / ref.thresholds
        mv_ratio, mv_mean = 0.0, float("nan")
        if ref.basis is not None:
            mv_mean = float(sum(b.data[2].sum() for b in blocks) / n)
            mv_ratio = mv_mean / ref.mv_threshold
        score = max(float(ratios.max()), mv_ratio)
        mix = None
        if score >= 1.0 and self.caller_reference:
            mix = self._mix_score(st, ref, blocks, p_win, mv_mean)
        quiet = score < 1.0 or (mix is not None and mix["score"] < 1.0)
        if self.caller_reference:
            # The window's oldest block, judged for the last time (a block is never
            # judged against itself), teaches callers with fewer than
            # caller_reference rows; while the window is quiet, up to reference_size.
            oldest = blocks[0]
            self._learn_callers(ref, oldest.data[0], oldest.principals, oldest.data[2],
                                limit=self.reference_size if quiet else None)
        if quiet:
            return None

        drifting = np.flatnonzero(ratios >= 1.0)
        codes = np.vstack([b.data[0] for b in blocks])
        errors = np.concatenate([b.data[2] for b in blocks]) if ref.basis is not None else None
        slots = self.bins + 1
        use_mv = mv_ratio >= 1.0

        def window_score(mask: np.ndarray) -> float:
            rows = int(mask.sum())
            best = 0.0
            if len(drifting):
                sub = _bin_counts(codes[mask][:, drifting], slots) / rows
                best = float((psi(ref.p_ref[drifting], sub) / ref.thresholds[drifting]).max())
            if use_mv and errors is not None:
                best = max(best, float(errors[mask].mean()) / ref.mv_threshold)
            return best

        principals = [p for b in blocks for p in b.principals]
        who = attribute(principals, window_score)
        js = js_distance(ref.p_ref, p_win)
        order = np.argsort(-ratios)[:5]
        top = [
            {
                "feature": ref.names[j],
                "psi": round(float(psis[j]), 4),
                "js_distance": round(float(js[j]), 4),
                "threshold": round(float(ref.thresholds[j]), 4),
                "missing_share_reference": round(float(ref.p_ref[j, -1]), 4),
                "missing_share_window": round(float(p_win[j, -1]), 4),
            }
            for j in order.tolist()
        ]
        single = who["scope"] == "single_principal"
        severity: Severity = "high" if single or score >= 3.0 else "medium"
        if len(drifting):
            lead = top[0]
            what = (
                f"{len(drifting)} of {len(ref.names)} features drifted "
                f"(top {lead['feature']}: PSI {lead['psi']:.2f} > {lead['threshold']:.2f})"
            )
        else:
            what = (
                f"the joint feature distribution drifted (reconstruction error "
                f"{mv_mean:.3g} > {ref.mv_threshold:.3g})"
            )
        return self.finding(
            st,
            kind="drift",
            severity=severity,
            summary=(
                f"Inputs of model {st.model_id} (version {st.version or '-'}): {what}, "
                f"{scope_phrase(who)}; check the upstream data and that caller's traffic."
            ),
            evidence={
                "statistic": "psi",
                "score": round(score, 3),
                "features_examined": len(ref.names),
                "features_drifting": len(drifting),
                "top_features": top,
                "multivariate": {
                    "statistic": "pca_reconstruction_error",
                    "observed": None if ref.basis is None else round(mv_mean, 5),
                    "reference": None if ref.basis is None else round(ref.mv_mean, 5),
                    "threshold": None if ref.basis is None else round(ref.mv_threshold, 5),
                },
                "min_psi": st.params["min_psi"],
                "events_examined": n,
                "type_errors_total": ref.schema.type_errors,
                "out_of_range_total": ref.schema.out_of_range,
                "attribution": who,
                "caller_mix": mix,
            },
            atlas=ATLAS_EVASION if single else [],
            event=event,
            source=source,
        )
